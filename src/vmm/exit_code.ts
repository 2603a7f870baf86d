// exit_code.ts - the exit codes of `tsvm run`, apart from the VMM so that the CLI needs no VMM code.

/** Exit codes of `tsvm run`. */
export const EXIT_CODE = { GUEST_EXIT: 0, VM_ERROR: 1, USAGE: 2 } as const;
