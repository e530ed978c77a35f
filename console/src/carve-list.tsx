import { useMemo, useState } from "preact/hooks";
import type { CarveList, CarveSummary, ListCarvesParams } from "../../src/client/api-client.js";
import { ErrorNote } from "./errors.js";
import { bytes, instant, shortId } from "./format.js";
import { takeFlash } from "./flash.js";
import { POLL_IDLE_MS, POLL_RECEIVING_MS, useNow, usePoll } from "./poll.js";
import { HoldBadge, RateTracker, StatusBadge, UploadProgress } from "./progress.js";
import { carveHref, href, navigate } from "./route.js";
import type { Session } from "./session.js";

const PAGE_SIZES = ["25", "50", "100"];

/** A page size from the address: any the API takes (1 to 500), the form offering it beside the usual ones. */
function pageSize(raw: string | null): string {
  return raw !== null && /^[1-9]\d{0,2}$/.test(raw) && Number(raw) <= 500 ? raw : "25";
}

interface Filters {
  status: string;
  node: string;
  since: string;
  until: string;
  limit: string;
}

function filtersOf(params: URLSearchParams): Filters {
  return {
    status: params.get("status") ?? "",
    node: params.get("node") ?? "",
    since: params.get("since") ?? "",
    until: params.get("until") ?? "",
    limit: pageSize(params.get("limit")),
  };
}

function queryOf(f: Filters, cursor: string | undefined): ListCarvesParams {
  const q: ListCarvesParams = { limit: Number(f.limit) };
  if (f.status === "receiving" || f.status === "complete") q.status = f.status;
  if (f.node) q.node = f.node.toLowerCase();
  if (f.since) q.since = f.since;
  if (f.until) q.until = f.until;
  if (cursor !== undefined) q.cursor = cursor;
  return q;
}

function FilterForm({ filters }: { filters: Filters }) {
  const [draft, setDraft] = useState(filters);
  const set = (key: keyof Filters) => (e: { currentTarget: { value: string } }) => setDraft({ ...draft, [key]: e.currentTarget.value });
  return (
    <form
      class="filters"
      aria-label="Filter carves"
      onSubmit={(e) => {
        e.preventDefault();
        navigate(href("/carves", { ...draft, limit: draft.limit === "25" ? "" : draft.limit }));
      }}
    >
      <label>
        Status
        <select name="status" value={draft.status} onChange={set("status")}>
          <option value="">any</option>
          <option value="receiving">receiving (and incomplete)</option>
          <option value="complete">complete</option>
        </select>
      </label>
      <label>
        Node key SHA-256 prefix
        <input
          name="node"
          value={draft.node}
          onInput={set("node")}
          pattern="[0-9a-fA-F]{8,64}"
          title="8 to 64 hex digits, as the carve's node column shows"
          placeholder="e.g. 3f9a1c0b"
          spellcheck={false}
          autocomplete="off"
        />
      </label>
      <label>
        Created from
        <input type="date" name="since" value={draft.since} onInput={set("since")} />
      </label>
      <label>
        Created before
        <input type="date" name="until" value={draft.until} onInput={set("until")} />
      </label>
      <label>
        Per page
        <select name="limit" value={draft.limit} onChange={set("limit")}>
          {[...new Set([...PAGE_SIZES, filters.limit])].sort((a, b) => Number(a) - Number(b)).map((n) => (
            <option value={n} key={n}>
              {n}
            </option>
          ))}
        </select>
      </label>
      <button type="submit">Apply filters</button>
      <a class="button-link" href={href("/carves")}>
        Clear
      </a>
    </form>
  );
}

function CarveRow({ carve, rates, now, fetchedAt }: { carve: CarveSummary; rates: RateTracker; now: number; fetchedAt: number }) {
  const agent = carve.agent.certificate?.subjectDn ?? carve.agent.address ?? "—";
  return (
    <tr data-carve-id={carve.carveId}>
      <td>
        <a href={carveHref(carve.carveId)} class="mono" title={carve.carveId}>
          {shortId(carve.carveId)}
        </a>
      </td>
      <td>
        <StatusBadge carve={carve} /> <HoldBadge carve={carve} />
      </td>
      <td>
        {carve.status === "complete" ? bytes(carve.carveSize) : <UploadProgress carve={carve} rates={rates} now={now} fetchedAt={fetchedAt} />}
      </td>
      <td class="mono">{carve.node.nodeKeySha256Prefix ?? "—"}</td>
      <td>{agent}</td>
      <td>{instant(carve.createdAt)}</td>
    </tr>
  );
}

export function CarveListPage({ session, params }: { session: Session; params: URLSearchParams }) {
  const filters = useMemo(() => filtersOf(params), [params.toString()]);
  const [cursors, setCursors] = useState<string[]>([]);
  const [page, setPage] = useState<{ list: CarveList; at: number } | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [flash] = useState(takeFlash);
  const rates = useMemo(() => new RateTracker(), []);
  const now = useNow();
  const cursor = cursors.at(-1);
  const key = `${params.toString()}|${cursor ?? ""}`;

  usePoll(async () => {
    try {
      const list = await session.client.listCarves(queryOf(filters, cursor));
      const at = Date.now();
      rates.observe(list.carves, at);
      setPage({ list, at });
      setError(null);
      return list.carves.some((c) => c.status !== "complete") ? POLL_RECEIVING_MS : POLL_IDLE_MS;
    } catch (err) {
      setError(err);
      return POLL_IDLE_MS;
    }
  }, [key]);

  const carves = page?.list.carves ?? [];
  return (
    <section aria-labelledby="page-title">
      <h1 id="page-title" tabIndex={-1}>
        Carves
      </h1>
      {flash ? (
        <p class="notice" role="status">
          {flash}
        </p>
      ) : null}
      <FilterForm filters={filters} key={params.toString()} />
      <ErrorNote error={error} />
      {page === null && error === null ? <p aria-live="polite">Loading…</p> : null}
      {page !== null ? (
        <table class="carves">
          <caption>
            {carves.length === 0 ? "No carves match." : `${carves.length} carve${carves.length === 1 ? "" : "s"} on this page, newest first`}
          </caption>
          <thead>
            <tr>
              <th scope="col">Carve</th>
              <th scope="col">Status</th>
              <th scope="col">Size / progress</th>
              <th scope="col">Node</th>
              <th scope="col">Agent</th>
              <th scope="col">Created</th>
            </tr>
          </thead>
          <tbody>
            {carves.map((c) => (
              <CarveRow carve={c} rates={rates} now={now} fetchedAt={page.at} key={c.carveId} />
            ))}
          </tbody>
        </table>
      ) : null}
      <nav class="pager" aria-label="Pages">
        <button type="button" disabled={cursors.length === 0} onClick={() => setCursors(cursors.slice(0, -1))}>
          Previous page
        </button>
        <span>Page {cursors.length + 1}</span>
        <button
          type="button"
          disabled={!page?.list.nextCursor}
          onClick={() => page?.list.nextCursor && setCursors([...cursors, page.list.nextCursor])}
        >
          Next page
        </button>
      </nav>
    </section>
  );
}
