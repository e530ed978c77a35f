import { ApiError, CarveApiClient, type FetchLike } from "../../src/client/api-client.js";

/**
 * The responder's Vault token, for this tab only: sessionStorage (a reload keeps it, closing the tab or "Lock"
 * forgets it). Never localStorage, which outlives the tab and is shared by every tab of the origin, and never a
 * URL: the token travels only as the X-Vault-Token header, through the one typed client.
 */
const TOKEN_KEY = "carve-console.token";

export function storedToken(): string | null {
  try {
    return sessionStorage.getItem(TOKEN_KEY);
  } catch {
    return null; // storage disabled: the token lives in memory only
  }
}

function keepToken(token: string): void {
  try {
    sessionStorage.setItem(TOKEN_KEY, token);
  } catch {
    // storage disabled or full: the session still works until a reload
  }
}

export function forgetToken(): void {
  try {
    sessionStorage.removeItem(TOKEN_KEY);
  } catch {
    // nothing kept
  }
}

/** The API's address: this page's origin and whatever path prefix a front serves /console/ under. */
export function apiAddress(): string {
  const at = location.pathname.lastIndexOf("/console/");
  return location.origin + (at >= 0 ? location.pathname.slice(0, at) : "");
}

export interface Session {
  client: CarveApiClient;
  /**
   * Whether the token holds the admin right (delete, holds, audit trail). The API has no endpoint that says
   * what a token may do, so sign-in asks for one audit event: 200 means admin, 403 means not. In Vault's
   * capabilities mode rights may differ per carve: an action refused later (403) is shown as the server's
   * refusal and then disabled.
   */
  admin: boolean;
}

/** Why a token was refused, worded for the sign-in page. */
export function refusalMessage(err: unknown): string {
  if (err instanceof ApiError) {
    if (err.code === "TOKEN_INVALID") return "Vault does not accept this token: it has expired, was revoked, or was mistyped. Sign in with a valid token.";
    if (err.code === "TOKEN_MISSING") return "Paste a Vault token to sign in.";
    if (err.code === "ACCESS_DENIED") return "This token is valid but may not list carves: it needs the download policy (osquery-carve-download).";
    return `The service refused: ${err.status} ${err.code}: ${err.message}`;
  }
  return `Cannot reach the service: ${(err as Error).message}`;
}

/**
 * Checks the token against the API and opens a session. `onUnauthorized` runs when any later request is
 * answered 401 (the token expired or was revoked meanwhile), with the reason to show at sign-in.
 * @throws ApiError or TransportError, whose refusalMessage is what to show
 */
export async function signIn(token: string, onUnauthorized: (message: string) => void): Promise<Session> {
  let open = false;
  const watched: FetchLike = async (url, init) => {
    // No cookies exist or are wanted; the token header is the only credential.
    const res = await fetch(url, { ...init, credentials: "omit", cache: "no-store" });
    if (res.status === 401 && open) {
      open = false;
      const code = await res
        .clone()
        .json()
        .then((b: { error?: { code?: string } }) => b.error?.code ?? "")
        .catch(() => "");
      onUnauthorized(
        code === "TOKEN_INVALID"
          ? "Your session ended: Vault no longer accepts the token (it expired or was revoked). Sign in with a new token."
          : "Your session ended: the service asked for a token again. Sign in.",
      );
    }
    return res;
  };
  const client = new CarveApiClient({ address: apiAddress(), token: token.trim(), fetch: watched });
  await client.listCarves({ limit: 1 });
  let admin = false;
  try {
    await client.audit({ limit: 1 });
    admin = true;
  } catch (err) {
    if (!(err instanceof ApiError) || err.status !== 403) throw err;
  }
  keepToken(token.trim());
  open = true;
  return { client, admin };
}
