import { useRef, useState } from "preact/hooks";
import type { CarveDetail } from "../../src/client/api-client.js";
import { ErrorNote, isForbidden } from "./errors.js";
import { bytes } from "./format.js";
import { saveDownload } from "./download.js";
import { setFlash } from "./flash.js";
import { href, navigate } from "./route.js";
import type { Session } from "./session.js";

type ActionName = "hold" | "release" | "delete";

/** One action's state: running, what it answered, or how it failed. */
function useAction() {
  const [busy, setBusy] = useState(false);
  const [done, setDone] = useState<string | null>(null);
  const [error, setError] = useState<unknown>(null);
  const run = async (work: () => Promise<string | null>, onError?: (err: unknown) => void): Promise<void> => {
    setBusy(true);
    setDone(null);
    setError(null);
    try {
      setDone(await work());
    } catch (err) {
      setError(err);
      onError?.(err);
    } finally {
      setBusy(false);
    }
  };
  return { busy, done, error, run };
}

function Outcome({ action, name }: { action: ReturnType<typeof useAction>; name: string }) {
  return (
    <div class="outcome" data-outcome={name}>
      {action.done ? (
        <p class="ok" role="status">
          {action.done}
        </p>
      ) : null}
      <ErrorNote error={action.error} />
    </div>
  );
}

function ArchiveDownloads({ session, carve }: { session: Session; carve: CarveDetail }) {
  const action = useAction();
  const [received, setReceived] = useState<number | null>(null);
  if (carve.archive === null) return <p>The archive can be downloaded once the carve is complete.</p>;
  const archive = carve.archive;
  const save = (format: "raw" | "tar") =>
    action.run(async () => {
      setReceived(0);
      const dl = await session.client.openArchive(carve.carveId, { format });
      const name = format === "tar" ? `${carve.carveId}.tar` : archive.fileName;
      const saved = await saveDownload(dl, name, setReceived);
      setReceived(null);
      // format=tar is decompressed on the fly: its hash is not the stored archive's.
      const check =
        saved.sha256 === null ? "" : format === "raw" ? (saved.sha256 === carve.sha256 ? ", SHA-256 matches the carve's" : ", SHA-256 DOES NOT match the carve's") : `, SHA-256 ${saved.sha256}`;
      return `Saved ${name}: ${saved.bytes.toLocaleString("en")} bytes${check}.`;
    });
  return (
    <div class="action-group">
      <h3>Archive</h3>
      <button type="button" disabled={action.busy} onClick={() => void save("raw")}>
        Download archive ({archive.fileName.endsWith(".zst") ? ".tar.zst" : ".tar"}, {bytes(archive.size)})
      </button>{" "}
      {archive.tarUrl ? (
        <button type="button" disabled={action.busy} onClick={() => void save("tar")}>
          Download as .tar (decompressed by the server)
        </button>
      ) : null}
      {received !== null ? <p aria-live="polite">Received {bytes(received)}…</p> : null}
      <Outcome action={action} name="archive" />
    </div>
  );
}

function VerifyForm({ session, carve, onChanged }: { session: Session; carve: CarveDetail; onChanged: () => void }) {
  const action = useAction();
  const [claimed, setClaimed] = useState("");
  return (
    <form
      class="action-group"
      onSubmit={(e) => {
        e.preventDefault();
        void action.run(async () => {
          const r = await session.client.verify(carve.carveId, claimed.trim());
          onChanged();
          return r.match ? "Match: the stored archive's SHA-256 equals the host's carves.sha256." : `MISMATCH: the host reported ${r.claimedSha256}, the stored archive is ${r.storedSha256}.`;
        });
      }}
    >
      <h3>Verify</h3>
      <label>
        The host's carves.sha256
        <input
          name="claimed"
          value={claimed}
          onInput={(e) => setClaimed(e.currentTarget.value)}
          required
          pattern="\s*([0-9a-fA-F]{64}|-1)\s*"
          title="64 hex digits, from SELECT sha256 FROM carves on the host"
          spellcheck={false}
          autocomplete="off"
          size={66}
        />
      </label>{" "}
      <button type="submit" disabled={action.busy || carve.status !== "complete"}>
        Verify
      </button>
      <Outcome action={action} name="verify" />
    </form>
  );
}

/** Why an admin action is disabled, or null when it may be tried. */
function adminBlock(session: Session, denied: ReadonlySet<ActionName>, name: ActionName): string | null {
  if (denied.has(name)) return "The server refused this token this action (403).";
  if (!session.admin) return "Needs an admin token: this token may not read the audit trail, so it holds no admin policy (osquery-carve-admin).";
  return null;
}

function Disabled({ id, reason }: { id: string; reason: string | null }) {
  return reason === null ? null : (
    <p class="hint" id={id}>
      {reason}
    </p>
  );
}

function HoldControls({ session, carve, denied, deny, onChanged }: AdminProps) {
  const action = useAction();
  const [reason, setReason] = useState("");
  const name: ActionName = carve.hold ? "release" : "hold";
  const block = adminBlock(session, denied, name);
  const hintId = `hold-hint-${carve.carveId}`;
  const described = block ? { "aria-describedby": hintId } : {};
  const refused = (err: unknown): void => {
    if (isForbidden(err)) deny(name);
  };
  if (carve.hold) {
    return (
      <div class="action-group">
        <h3>Legal hold</h3>
        <p>
          Held by {carve.hold.by}: “{carve.hold.reason}”. Retention and deletion leave it alone until released.
        </p>
        <button
          type="button"
          data-action="release"
          disabled={action.busy || block !== null}
          {...described}
          onClick={() =>
            void action.run(async () => {
              await session.client.releaseHold(carve.carveId);
              onChanged();
              return "Hold released.";
            }, refused)
          }
        >
          Release hold
        </button>
        <Disabled id={hintId} reason={block} />
        <Outcome action={action} name="hold" />
      </div>
    );
  }
  return (
    <form
      class="action-group"
      onSubmit={(e) => {
        e.preventDefault();
        void action.run(async () => {
          await session.client.placeHold(carve.carveId, reason.trim());
          setReason("");
          onChanged();
          return "Hold placed.";
        }, refused);
      }}
    >
      <h3>Legal hold</h3>
      <label>
        Reason for the hold
        <input
          name="reason"
          value={reason}
          onInput={(e) => setReason(e.currentTarget.value)}
          required
          maxLength={1000}
          placeholder="e.g. case IR-2024-17"
          disabled={block !== null}
          {...described}
        />
      </label>{" "}
      <button type="submit" data-action="hold" disabled={action.busy || block !== null} {...described}>
        Place hold
      </button>
      <Disabled id={hintId} reason={block} />
      <Outcome action={action} name="hold" />
    </form>
  );
}

function DeleteControl({ session, carve, denied, deny }: AdminProps) {
  const action = useAction();
  const dialog = useRef<HTMLDialogElement>(null);
  const block = carve.hold ? "A carve under legal hold cannot be deleted: release the hold first." : adminBlock(session, denied, "delete");
  const hintId = `delete-hint-${carve.carveId}`;
  const remove = (): void => {
    dialog.current?.close();
    void action.run(
      async () => {
        const r = await session.client.deleteCarve(carve.carveId);
        setFlash(`Carve ${carve.carveId} deleted (${bytes(r.bytesFreed)} freed).`);
        navigate(href("/carves"));
        return null;
      },
      (err) => isForbidden(err) && deny("delete"),
    );
  };
  return (
    <div class="action-group">
      <h3>Delete</h3>
      <button
        type="button"
        class="danger"
        data-action="delete"
        disabled={action.busy || block !== null}
        {...(block ? { "aria-describedby": hintId } : {})}
        onClick={() => dialog.current?.showModal()}
      >
        Delete carve…
      </button>
      <Disabled id={hintId} reason={block} />
      <Outcome action={action} name="delete" />
      <dialog ref={dialog} aria-labelledby={`${hintId}-title`}>
        <h2 id={`${hintId}-title`}>Delete this carve?</h2>
        <p>
          Carve <span class="mono">{carve.carveId}</span> and its archive ({bytes(carve.carveSize)}) are removed for good. The audit trail
          keeps a record of the deletion.
        </p>
        <div class="dialog-buttons">
          <button type="button" onClick={() => dialog.current?.close()} autofocus>
            Cancel
          </button>
          <button type="button" class="danger" data-action="confirm-delete" onClick={remove}>
            Delete permanently
          </button>
        </div>
      </dialog>
    </div>
  );
}

interface AdminProps {
  session: Session;
  carve: CarveDetail;
  denied: ReadonlySet<ActionName>;
  deny: (name: ActionName) => void;
  onChanged: () => void;
}

/** What can be done with a carve: download, verify, hold or release, delete; admin ones only with the right. */
export function CarveActions({ session, carve, onChanged }: { session: Session; carve: CarveDetail; onChanged: () => void }) {
  const [denied, setDenied] = useState<ReadonlySet<ActionName>>(new Set());
  const deny = (name: ActionName): void => setDenied((d) => new Set([...d, name]));
  const props: AdminProps = { session, carve, denied, deny, onChanged };
  return (
    <section aria-labelledby="actions-title" class="actions">
      <h2 id="actions-title">Actions</h2>
      <ArchiveDownloads session={session} carve={carve} />
      <VerifyForm session={session} carve={carve} onChanged={onChanged} />
      <HoldControls {...props} />
      <DeleteControl {...props} />
    </section>
  );
}
