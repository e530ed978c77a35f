import { useEffect, useState } from "preact/hooks";
import type { FilesListingView, TarMemberView } from "../../src/client/api-client.js";
import { saveDownload } from "./download.js";
import { ErrorNote } from "./errors.js";
import { bytes, instant } from "./format.js";
import type { Session } from "./session.js";

const TRUNCATED: Record<string, string> = {
  "max-members": "it has more members than the service lists (listing.maxMembers)",
  "max-bytes-examined": "the service stopped reading after listing.maxBytesExamined of decompressed tar",
  "max-name-bytes": "the member names exceed 16 MiB in all",
  "extended-header-too-large": "a pax or GNU long-name header is over 64 KiB",
  "too-many-pax-keys": "a global pax header has over 256 keys",
};

function baseName(m: TarMemberView): string {
  return (m.path ?? m.name).replace(/\/+$/, "").split("/").pop() || "file";
}

function FileRow({ session, carveId, member, n }: { session: Session; carveId: string; member: TarMemberView; n: number }) {
  const [state, setState] = useState<{ busy: boolean; done: string | null; error: unknown }>({ busy: false, done: null, error: null });
  const download = async (): Promise<void> => {
    setState({ busy: true, done: null, error: null });
    try {
      const dl = await session.client.openFile(carveId, n);
      const saved = await saveDownload(dl, dl.fileName ?? baseName(member));
      const check = saved.sha256 === null ? "" : saved.sha256 === dl.sha256 ? ", SHA-256 matches" : ", SHA-256 DOES NOT match";
      setState({ busy: false, done: `Saved ${dl.fileName ?? baseName(member)}: ${saved.bytes.toLocaleString("en")} bytes${check}.`, error: null });
    } catch (error) {
      setState({ busy: false, done: null, error });
    }
  };
  const shown = member.path ?? member.name;
  return (
    <tr data-member={n}>
      <td>{n}</td>
      <td class="path">
        {shown}
        {member.type === "symlink" || member.type === "hardlink" ? ` → ${member.linkTarget ?? "?"}` : ""}
      </td>
      <td>{member.type}</td>
      <td>{member.type === "file" ? bytes(member.size) : ""}</td>
      <td class="mono">{member.mode}</td>
      <td>{instant(member.mtime)}</td>
      <td class="mono small sha" data-field="member-sha256">
        {member.sha256 ?? ""}
      </td>
      <td>
        {member.type === "file" ? (
          <button type="button" disabled={state.busy} onClick={() => void download()} aria-label={`Download ${shown}`}>
            Download
          </button>
        ) : null}
        {state.done ? (
          <p class="ok" role="status">
            {state.done}
          </p>
        ) : null}
        <ErrorNote error={state.error} />
      </td>
    </tr>
  );
}

/** The files inside a complete carve, each regular file with its SHA-256 and a download of it alone. */
export function FilesTable({ session, carveId, sha256 }: { session: Session; carveId: string; sha256: string | null }) {
  const [listing, setListing] = useState<FilesListingView | null>(null);
  const [error, setError] = useState<unknown>(null);
  useEffect(() => {
    let live = true;
    session.client.listFiles(carveId).then(
      (l) => live && setListing(l),
      (err: unknown) => live && setError(err),
    );
    return () => {
      live = false;
    };
  }, [carveId, sha256]);
  if (error !== null) return <ErrorNote error={error} />;
  if (listing === null) return <p aria-live="polite">Reading the archive…</p>;
  return (
    <>
      {listing.truncated ? (
        <p class="warning" role="note">
          Partial list: {TRUNCATED[listing.truncatedReason ?? ""] ?? "the listing stopped at a bound"}. Download the archive to see all of it.
        </p>
      ) : null}
      <div class="table-scroll">
        <table class="files">
          <caption>
            {listing.memberCount} member{listing.memberCount === 1 ? "" : "s"} in the archive
          </caption>
          <thead>
            <tr>
              <th scope="col">#</th>
              <th scope="col">Path on the host</th>
              <th scope="col">Type</th>
              <th scope="col">Size</th>
              <th scope="col">Mode</th>
              <th scope="col">Modified</th>
              <th scope="col">SHA-256</th>
              <th scope="col">
                <span class="visually-hidden">Download</span>
              </th>
            </tr>
          </thead>
          <tbody>
            {listing.members.map((m, n) => (
              <FileRow session={session} carveId={carveId} member={m} n={n} key={n} />
            ))}
          </tbody>
        </table>
      </div>
    </>
  );
}
