// assets.d.ts - module declarations for files embedded with `with { type: "file" }`.
declare module "*.so" {
  const path: string;
  export default path;
}
declare module "*.elf" {
  const path: string;
  export default path;
}
declare module "*.policy" {
  const text: string;
  export default text;
}
