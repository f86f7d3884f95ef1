// Quoting for the places where a command line must be one string: a POSIX shell on the far side of ssh
// (ssh hands the remote host a single command string) and a generated shell script.

/** POSIX single quoting: nothing inside is expanded; a quote becomes '\''. */
export const shellQuote = (value: string) => `'${value.replaceAll("'", `'\\''`)}'`
