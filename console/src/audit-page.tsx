import { Fragment } from "preact";
import { useEffect, useState } from "preact/hooks";
import type { AuditEventView, AuditPageView, AuditParams } from "../../src/client/api-client.js";
import { ErrorNote } from "./errors.js";
import { instant } from "./format.js";
import { carveHref, href, navigate } from "./route.js";
import type { Session } from "./session.js";

/** The actions the audit trail records (docs/responder-api.md, section 8). */
const ACTIONS = [
  "carve.list",
  "carve.read",
  "carve.download",
  "carve.files",
  "carve.delete",
  "carve.hold",
  "carve.release",
  "carve.verify",
  "carve.import",
  "audit.read",
  "auth.failures",
];

interface Filters {
  carve_id: string;
  action: string;
  since: string;
  until: string;
}

function queryOf(f: Filters, cursor: string | undefined): AuditParams {
  const q: AuditParams = { limit: 50 };
  if (f.carve_id) q.carve_id = f.carve_id.trim();
  if (f.action) q.action = f.action;
  if (f.since) q.since = f.since;
  if (f.until) q.until = f.until;
  if (cursor !== undefined) q.cursor = cursor;
  return q;
}

function Detail({ detail }: { detail: AuditEventView["detail"] }) {
  const entries = Object.entries(detail).filter(([k]) => k !== "method");
  if (entries.length === 0) return null;
  return (
    <details>
      <summary>{entries.length} details</summary>
      <dl class="audit-detail">
        {entries.map(([k, v]) => (
          <Fragment key={k}>
            <dt>{k}</dt>
            <dd>{String(v)}</dd>
          </Fragment>
        ))}
      </dl>
    </details>
  );
}

/** The audit trail (admin tokens): every API request, allowed or not, newest first, filterable. */
export function AuditPage({ session, params }: { session: Session; params: URLSearchParams }) {
  const filters: Filters = {
    carve_id: params.get("carve_id") ?? "",
    action: params.get("action") ?? "",
    since: params.get("since") ?? "",
    until: params.get("until") ?? "",
  };
  const [draft, setDraft] = useState(filters);
  const [cursors, setCursors] = useState<string[]>([]);
  const [page, setPage] = useState<AuditPageView | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [reload, setReload] = useState(0);
  const cursor = cursors.at(-1);
  useEffect(() => {
    let live = true;
    session.client.audit(queryOf(filters, cursor)).then(
      (p) => {
        if (!live) return;
        setPage(p);
        setError(null);
      },
      (err: unknown) => live && setError(err),
    );
    return () => {
      live = false;
    };
  }, [params.toString(), cursor, reload]);
  const set = (key: keyof Filters) => (e: { currentTarget: { value: string } }) => setDraft({ ...draft, [key]: e.currentTarget.value });

  return (
    <section aria-labelledby="page-title">
      <h1 id="page-title" tabIndex={-1}>
        Audit trail
      </h1>
      <form
        class="filters"
        aria-label="Filter audit events"
        onSubmit={(e) => {
          e.preventDefault();
          navigate(href("/audit", { ...draft }));
        }}
      >
        <label>
          Carve id
          <input name="carve_id" value={draft.carve_id} onInput={set("carve_id")} spellcheck={false} autocomplete="off" size={38} />
        </label>
        <label>
          Action
          <select name="action" value={draft.action} onChange={set("action")}>
            <option value="">any</option>
            {ACTIONS.map((a) => (
              <option value={a} key={a}>
                {a}
              </option>
            ))}
          </select>
        </label>
        <label>
          From
          <input type="date" name="since" value={draft.since} onInput={set("since")} />
        </label>
        <label>
          Before
          <input type="date" name="until" value={draft.until} onInput={set("until")} />
        </label>
        <button type="submit">Apply filters</button>
        <button type="button" onClick={() => setReload(reload + 1)}>
          Refresh
        </button>
      </form>
      <ErrorNote error={error} />
      {page ? (
        <div class="table-scroll">
          <table class="audit">
            <caption>{page.events.length === 0 ? "No events match." : `${page.events.length} events, newest first`}</caption>
            <thead>
              <tr>
                <th scope="col">At</th>
                <th scope="col">Action</th>
                <th scope="col">Result</th>
                <th scope="col">Who</th>
                <th scope="col">From</th>
                <th scope="col">Carve</th>
                <th scope="col">Detail</th>
              </tr>
            </thead>
            <tbody>
              {page.events.map((e) => (
                <tr key={e.id} data-audit-action={e.action} data-audit-id={e.id}>
                  <td>{instant(e.at)}</td>
                  <td class="mono">{e.action}</td>
                  <td>
                    <span class={`badge badge-result-${e.result}`}>{e.result}</span>
                  </td>
                  <td>{e.actor.displayName ?? (e.actor.tokenFingerprint ? `token ${e.actor.tokenFingerprint.slice(0, 8)}` : "no token")}</td>
                  <td>
                    {e.client.address ?? "—"}
                    {e.client.certificateSubject ? ` (${e.client.certificateSubject})` : ""}
                  </td>
                  <td>
                    {e.carveId ? (
                      <a href={carveHref(e.carveId)} class="mono" title={e.carveId}>
                        {e.carveId.slice(0, 8)}
                      </a>
                    ) : (
                      "—"
                    )}
                  </td>
                  <td>
                    <Detail detail={e.detail} />
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      ) : null}
      <nav class="pager" aria-label="Pages">
        <button type="button" disabled={cursors.length === 0} onClick={() => setCursors(cursors.slice(0, -1))}>
          Previous page
        </button>
        <span>Page {cursors.length + 1}</span>
        <button type="button" disabled={!page?.nextCursor} onClick={() => page?.nextCursor && setCursors([...cursors, page.nextCursor])}>
          Next page
        </button>
      </nav>
    </section>
  );
}
