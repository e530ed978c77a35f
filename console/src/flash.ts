/** A message for the next page shown (e.g. "carve deleted" on the list after a delete), shown once. */
let pending: string | null = null;

export function setFlash(message: string): void {
  pending = message;
}

export function takeFlash(): string | null {
  const m = pending;
  pending = null;
  return m;
}
