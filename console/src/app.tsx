import { useEffect, useRef, useState } from "preact/hooks";
import { AuditPage } from "./audit-page.js";
import { CarveListPage } from "./carve-list.js";
import { CarvePage } from "./carve-page.js";
import { forgetToken, refusalMessage, signIn, storedToken, type Session } from "./session.js";
import { href, useRoute, type Route } from "./route.js";

function SignIn({ notice, onSignedIn, onExpired }: { notice: string | null; onSignedIn: (s: Session) => void; onExpired: (m: string) => void }) {
  const [token, setToken] = useState("");
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const field = useRef<HTMLInputElement>(null);
  useEffect(() => field.current?.focus(), []);
  return (
    <main id="main" class="signin">
      <h1>Sign in to the carve console</h1>
      {notice ? (
        <p class="notice" role="status" data-signin-notice>
          {notice}
        </p>
      ) : null}
      <form
        method="post"
        onSubmit={(e) => {
          e.preventDefault();
          if (token.trim() === "") {
            setError("Paste a Vault token to sign in.");
            return;
          }
          setBusy(true);
          setError(null);
          signIn(token, onExpired).then(
            (s) => {
              setToken("");
              onSignedIn(s);
            },
            (err: unknown) => {
              setBusy(false);
              setError(refusalMessage(err));
            },
          );
        }}
      >
        <label for="token">Vault token</label>
        <input
          id="token"
          ref={field}
          type="password"
          name="token"
          value={token}
          onInput={(e) => setToken(e.currentTarget.value)}
          autocomplete="off"
          spellcheck={false}
          aria-describedby="token-help"
          aria-invalid={error !== null}
        />
        <p id="token-help" class="hint">
          From <code>vault login</code> then <code>vault print token</code>. It stays in this tab only, is sent to the service as the
          X-Vault-Token header and never in an address, and is forgotten when you lock the console or close the tab.
        </p>
        <button type="submit" disabled={busy}>
          {busy ? "Checking…" : "Sign in"}
        </button>
        {error ? (
          <p class="error" role="alert">
            {error}
          </p>
        ) : null}
      </form>
    </main>
  );
}

function Page({ session, route }: { session: Session; route: Route }) {
  switch (route.page) {
    case "carves":
      return <CarveListPage session={session} params={route.params} key={route.params.toString()} />;
    case "carve":
      return <CarvePage session={session} carveId={route.carveId} key={route.carveId} />;
    case "audit":
      return <AuditPage session={session} params={route.params} key={route.params.toString()} />;
    default:
      return (
        <section>
          <h1 id="page-title" tabIndex={-1}>
            No such page
          </h1>
          <p>
            <a href={href("/carves")}>Go to the carves</a>
          </p>
        </section>
      );
  }
}

function Shell({ session, onLock }: { session: Session; onLock: () => void }) {
  const route = useRoute();
  const main = useRef<HTMLElement>(null);
  useEffect(() => {
    // A new page: move focus to its title, so keyboard and screen reader users start there.
    const title = main.current?.querySelector<HTMLElement>("#page-title");
    if (title && document.activeElement !== title && main.current?.contains(document.activeElement) !== true) title.focus();
  }, [route.page, route.page === "carve" ? route.carveId : ""]);
  const current = (page: Route["page"]) => (route.page === page ? { "aria-current": "page" as const } : {});
  return (
    <>
      <a class="skip-link" href="#main" onClick={(e) => (e.preventDefault(), main.current?.focus())}>
        Skip to content
      </a>
      <header class="top">
        <span class="brand">osquery carves</span>
        <nav aria-label="Console">
          <a href={href("/carves")} {...current("carves")}>
            Carves
          </a>
          {session.admin ? (
            <a href={href("/audit")} {...current("audit")}>
              Audit trail
            </a>
          ) : null}
        </nav>
        <span class="who">{session.admin ? "admin token" : "download token"}</span>
        <button type="button" class="lock" onClick={onLock}>
          Lock
        </button>
      </header>
      <main id="main" ref={main} tabIndex={-1}>
        <Page session={session} route={route} />
      </main>
    </>
  );
}

export function App() {
  const [session, setSession] = useState<Session | null>(null);
  const [notice, setNotice] = useState<string | null>(null);
  const [restoring, setRestoring] = useState(() => storedToken() !== null);
  const expire = (message: string): void => {
    forgetToken();
    setSession(null);
    setNotice(message);
  };
  useEffect(() => {
    const token = storedToken();
    if (token === null) return;
    signIn(token, expire)
      .then(setSession, (err: unknown) => {
        forgetToken();
        setNotice(refusalMessage(err));
      })
      .finally(() => setRestoring(false));
  }, []);
  if (session !== null) {
    return (
      <Shell
        session={session}
        onLock={() => {
          forgetToken();
          setSession(null);
          setNotice("Locked: the token was forgotten. Paste it again to continue.");
        }}
      />
    );
  }
  if (restoring) return <p aria-live="polite">Signing in…</p>;
  return (
    <SignIn
      notice={notice}
      onSignedIn={(s) => {
        setNotice(null);
        setSession(s);
      }}
      onExpired={expire}
    />
  );
}
