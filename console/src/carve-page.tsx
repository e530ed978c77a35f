import type { ComponentChildren } from "preact";
import { useMemo, useState } from "preact/hooks";
import type { CarveDetail } from "../../src/client/api-client.js";
import { CarveActions } from "./carve-actions.js";
import { ErrorNote } from "./errors.js";
import { bytes, instant } from "./format.js";
import { FilesTable } from "./files-table.js";
import { POLL_RECEIVING_MS, useNow, usePoll } from "./poll.js";
import { HoldBadge, RateTracker, StatusBadge, UploadProgress } from "./progress.js";
import { href } from "./route.js";
import type { Session } from "./session.js";

function Row({ name, children }: { name: string; children: ComponentChildren }) {
  return (
    <>
      <dt>{name}</dt>
      <dd>{children}</dd>
    </>
  );
}

function Metadata({ carve }: { carve: CarveDetail }) {
  const cert = carve.agent.certificate;
  return (
    <dl class="metadata">
      <Row name="Carve id">
        <span class="mono">{carve.carveId}</span>
      </Row>
      <Row name="Agent">
        {carve.agent.userAgent ?? "—"} from {carve.agent.address ?? "an unknown address"}
        {carve.origin === "import" ? " (imported archive)" : ""}
      </Row>
      <Row name="Certificate">
        {cert ? (
          <>
            {cert.subjectDn}
            <br />
            <span class="mono small">SHA-256 {cert.fingerprintSha256}</span> (verified by {cert.source === "proxy" ? "the TLS front" : "the service"})
          </>
        ) : (
          "none recorded"
        )}
      </Row>
      <Row name="Node">
        <span class="mono">{carve.node.nodeKeySha256Prefix ?? "—"}</span> (prefix of the node key's SHA-256)
      </Row>
      <Row name="Size">
        {bytes(carve.carveSize)} ({carve.carveSize.toLocaleString("en")} bytes) in {carve.blockCount} blocks of {bytes(carve.blockSize)}
      </Row>
      <Row name="SHA-256">
        <span class="mono" data-field="sha256">
          {carve.sha256 ?? "not yet: computed when the last block arrives"}
        </span>
      </Row>
      <Row name="Compression">{carve.compression === null ? "—" : carve.compression === "zstd" ? "zstd (.tar.zst)" : "none (.tar)"}</Row>
      <Row name="Created">{instant(carve.createdAt)}</Row>
      <Row name="Completed">{instant(carve.completedAt)}</Row>
      <Row name="Expires">{carve.hold ? "never while on hold" : instant(carve.expiresAt)}</Row>
      <Row name="Legal hold">
        <span data-field="hold">{carve.hold ? `by ${carve.hold.by} at ${instant(carve.hold.at)}: ${carve.hold.reason}` : "none"}</span>
      </Row>
      {carve.imported ? (
        <Row name="Imported">
          from {carve.imported.host ?? "an unnamed host"}
          {carve.imported.originalPath ? `, ${carve.imported.originalPath}` : ""} by {carve.imported.importedBy.displayName ?? "—"}
          {carve.imported.description ? `: ${carve.imported.description}` : ""}
        </Row>
      ) : null}
      {carve.status !== "complete" && carve.missingBlockIds.length > 0 ? (
        <Row name="Missing blocks">
          {carve.blocksMissing} ({carve.missingBlockIds.slice(0, 20).join(", ")}
          {carve.blocksMissing > 20 ? ", …" : ""})
        </Row>
      ) : null}
    </dl>
  );
}

function Verifications({ carve }: { carve: CarveDetail }) {
  if (carve.verifications.length === 0) return <p>Not verified against the host's carves.sha256 yet.</p>;
  return (
    <table class="verifications">
      <caption>Verifications against the host's carves.sha256, newest last</caption>
      <thead>
        <tr>
          <th scope="col">At</th>
          <th scope="col">By</th>
          <th scope="col">Host's SHA-256</th>
          <th scope="col">Result</th>
        </tr>
      </thead>
      <tbody>
        {carve.verifications.map((v) => (
          <tr key={`${v.at}-${v.claimedSha256}`}>
            <td>{instant(v.at)}</td>
            <td>{v.by ?? "—"}</td>
            <td class="mono small">{v.claimedSha256}</td>
            <td>{v.match ? <span class="badge badge-complete">match</span> : <span class="badge badge-mismatch">MISMATCH</span>}</td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}

export function CarvePage({ session, carveId }: { session: Session; carveId: string }) {
  const [state, setState] = useState<{ carve: CarveDetail; at: number } | null>(null);
  const [error, setError] = useState<unknown>(null);
  const rates = useMemo(() => new RateTracker(), []);
  const now = useNow();
  const refresh = usePoll(async () => {
    try {
      const carve = await session.client.getCarve(carveId);
      const at = Date.now();
      rates.observe([carve], at);
      setState({ carve, at });
      setError(null);
      return carve.status === "complete" ? null : POLL_RECEIVING_MS;
    } catch (err) {
      setError(err);
      return null;
    }
  }, [carveId]);

  const carve = state?.carve;
  return (
    <section aria-labelledby="page-title">
      <p>
        <a href={href("/carves")}>← All carves</a>
      </p>
      <h1 id="page-title" tabIndex={-1}>
        Carve <span class="mono">{carveId}</span>
      </h1>
      <ErrorNote error={error} />
      {carve ? (
        <>
          <p class="status-line">
            <StatusBadge carve={carve} /> <HoldBadge carve={carve} />
            {carve.lastVerification ? (
              <span class={`badge ${carve.lastVerification.match ? "badge-complete" : "badge-mismatch"}`}>
                {carve.lastVerification.match ? "verified" : "verification MISMATCH"}
              </span>
            ) : null}
          </p>
          {carve.status !== "complete" ? <UploadProgress carve={carve} rates={rates} now={now} fetchedAt={state.at} /> : null}
          <Metadata carve={carve} />
          <CarveActions session={session} carve={carve} onChanged={refresh} />
          <h2>Verifications</h2>
          <Verifications carve={carve} />
          <h2>Files</h2>
          {carve.status === "complete" ? (
            <FilesTable session={session} carveId={carve.carveId} sha256={carve.sha256} />
          ) : (
            <p>The file list is available once every block has arrived.</p>
          )}
        </>
      ) : error === null ? (
        <p aria-live="polite">Loading…</p>
      ) : null}
    </section>
  );
}
