// result.ts - the tagged result every trust boundary returns: a value, or what went wrong.
//
// Input from the guest, a device process, a vhost-user peer, the control socket or a file the user
// named decodes into a Result; it never throws and callers never match on message text.

/** A value, or an error of type E (a string saying what went wrong, unless a module needs more). */
export type Result<T, E = string> = { readonly ok: true; readonly value: T } | { readonly ok: false; readonly error: E };

/** Returns a successful Result. */
export function ok<T>(value: T): { readonly ok: true; readonly value: T } {
  return { ok: true, value };
}

/** Returns a failed Result. */
export function err<E>(error: E): { readonly ok: false; readonly error: E } {
  return { ok: false, error };
}

/** Returns the message of anything thrown, for results and logs. */
export function describeError(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
