/**
 * `carvectl extract` (the built binary, a live service, the Vault double) on real osquery archives, plain
 * and zstd, and on crafted ones that try to write outside DIR: absolute names, `..`, a symlink then a file
 * through it, symlink chains, hard links out, device nodes, a zstd size bomb. Whatever the archive says,
 * nothing outside DIR changes, and every refusal is reported.
 */
import { randomBytes, randomUUID } from "node:crypto";
import { lstat, mkdir, mkdtemp, readdir, readFile, readlink, realpath, rm, stat, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { buildCarveArchive } from "../../scripts/emulator/index.js";
import { uploadCarve } from "../support/carve-upload.js";
import { carvectl, type CliRun } from "../support/carvectl.js";
import { startTestService, type TestService } from "../support/service.js";
import { craftTar, zstd, type CraftedMember } from "../support/tar-writer.js";
import { startVaultDouble, type VaultDouble } from "../support/vault-double.js";

let vault: VaultDouble;
let svc: TestService;
let work: string;
const TOKEN = `hvs.CAESIextract${randomBytes(8).toString("hex")}`;

beforeAll(async () => {
  vault = await startVaultDouble();
  vault.addToken(TOKEN, { policies: ["osquery-carve-download"], displayName: "ldap-bob" });
  svc = await startTestService({ VAULT_ADDR: vault.url });
  work = await mkdtemp(path.join(tmpdir(), "extract-"));
}, 60_000);

afterAll(async () => {
  await svc.dispose();
  await vault.close();
  await rm(work, { recursive: true, force: true });
});

interface Result {
  run: CliRun;
  /** Directory extracted into. */
  dest: string;
  /** Its sibling, with one file in it: links in the archives point here. */
  outside: string;
  refused: Array<{ member: string; reason: string }>;
  extracted: Array<{ path: string; type: string }>;
}

/** Every path under `dir` (lstat: links are not followed), with its kind. */
async function tree(dir: string): Promise<string[]> {
  const out: string[] = [];
  const walk = async (at: string): Promise<void> => {
    for (const name of (await readdir(at)).sort()) {
      const p = path.join(at, name);
      const st = await lstat(p);
      out.push(`${path.relative(dir, p)}${st.isDirectory() ? "/" : st.isSymbolicLink() ? ` -> ${await readlink(p)}` : ""}`);
      if (st.isDirectory()) await walk(p);
    }
  };
  await walk(dir);
  return out;
}

/** Uploads the archive, extracts it with carvectl, and checks nothing outside DIR changed. */
async function extract(archive: Buffer, args: string[] = [], before?: (dest: string) => Promise<void>): Promise<Result> {
  const carve = await uploadCarve(svc.url, archive, { dir: work });
  const box = await mkdtemp(path.join(work, "box-"));
  const dest = path.join(box, "dest");
  const outside = path.join(box, "outside");
  await mkdir(outside);
  await writeFile(path.join(outside, "secret"), "keep me");
  if (before) {
    await mkdir(dest);
    await before(dest);
  }
  const boxBefore = (await tree(box)).filter((p) => !p.startsWith("dest"));
  const hadBefore = new Set(before ? await tree(dest) : []);
  const run = await carvectl(["extract", carve.carveId, "--dest", dest, "--json", ...args], {
    env: { CARVE_ADDR: svc.url, VAULT_TOKEN: TOKEN, HOME: work },
  });
  expect((await tree(box)).filter((p) => !p.startsWith("dest")), "nothing outside DIR changed").toEqual(boxBefore);
  expect(await readFile(path.join(outside, "secret"), "utf8")).toBe("keep me");
  // Whatever was created in DIR resolves inside it.
  const root = await realpath(dest);
  for (const p of (await tree(dest)).filter((x) => !hadBefore.has(x))) {
    const target = path.join(dest, p.split(" -> ")[0]?.replace(/\/$/, "") ?? "");
    const resolved = await realpath(target).catch(() => null);
    if (resolved !== null) expect(resolved === root || resolved.startsWith(`${root}/`), `${p} resolves to ${resolved}`).toBe(true);
  }
  const parsed = run.stdout.length > 0 ? run.json<{ refused: Result["refused"]; extracted: Result["extracted"] }>() : { refused: [], extracted: [] };
  return { run, dest, outside, refused: parsed.refused, extracted: parsed.extracted };
}

const reasonOf = (r: Result, member: string): string | undefined => r.refused.find((x) => x.member === member)?.reason;

describe("carvectl extract", () => {
  it("places osquery's members at their host paths, from plain and zstd carves, all or the ones named", async () => {
    const src = path.join(work, "host");
    await mkdir(path.join(src, "etc"), { recursive: true });
    const blob = randomBytes(200_000);
    await writeFile(path.join(src, "etc/hosts"), "127.0.0.1 localhost\n");
    await writeFile(path.join(src, "blob.bin"), blob);
    for (const compression of [false, true]) {
      const id = randomUUID();
      const built = await buildCarveArchive({ paths: [path.join(src, "etc/hosts"), path.join(src, "blob.bin")], carveId: id, outFile: path.join(work, `${id}.out`), compression, paxTimes: true });
      const archive = await readFile(built.path);
      const all = await extract(archive);
      expect(all.run.code, all.run.stderr).toBe(0);
      expect(all.run.stderr).toBe("");
      expect(await readFile(path.join(all.dest, src, "etc/hosts"), "utf8")).toBe("127.0.0.1 localhost\n");
      expect((await readFile(path.join(all.dest, src, "blob.bin"))).equals(blob)).toBe(true);
      expect(all.run.json()).toMatchObject({ verified: true, refused: [], unmatched: [] });
      // mtime kept (osquery 5.22+ records it)
      expect(Math.abs((await stat(path.join(all.dest, src, "etc/hosts"))).mtimeMs - (await stat(path.join(src, "etc/hosts"))).mtimeMs)).toBeLessThan(1000);

      const one = await extract(archive, [path.join(src, "etc/hosts")]);
      expect(one.run.code, one.run.stderr).toBe(0);
      expect(one.extracted.map((e) => e.path)).toEqual([path.join(src, "etc/hosts").slice(1)]);
      const none = await extract(archive, ["/no/such"]);
      expect(none.run.code).toBe(4);
      expect(none.run.stderr).toMatch(/no member matches "\/no\/such": carvectl files/);
    }
  });

  it("refuses absolute names and '..', extracting the rest", async () => {
    const r = await extract(
      craftTar([
        { name: "ok.txt", content: "fine" },
        { name: "/etc/evil-absolute", content: "x" },
        { name: "../escape.txt", content: "x" },
        { name: "a/../../escape2.txt", content: "x" },
        { name: "/tmp/osquery_carve_0d1e/../../escape3.txt", content: "x" },
        { name: "./also-ok.txt", content: "fine too" },
      ]),
    );
    expect(r.run.code).toBe(8);
    expect(reasonOf(r, "/etc/evil-absolute")).toBe("absolute name");
    expect(reasonOf(r, "../escape.txt")).toBe("'..' in its name");
    expect(reasonOf(r, "a/../../escape2.txt")).toBe("'..' in its name");
    expect(reasonOf(r, "/tmp/osquery_carve_0d1e/../../escape3.txt")).toBe("'..' in its name");
    expect(await tree(r.dest)).toEqual(["also-ok.txt", "ok.txt"]);
    expect(r.run.stderr.split("\n").filter(Boolean)).toEqual([
      'carvectl: refused "/etc/evil-absolute": absolute name',
      `carvectl: refused "../escape.txt": '..' in its name`,
      `carvectl: refused "a/../../escape2.txt": '..' in its name`,
      `carvectl: refused "/tmp/osquery_carve_0d1e/../../escape3.txt": '..' in its name`,
    ]);
  });

  it("never writes through a symlink: a link out then a file through it, a link in then a file through it, a chain", async () => {
    const r = await extract(
      craftTar(
        ([
          { name: "out", typeflag: "2", linkTarget: "/tmp" },
          { name: "out/pwned.txt", content: "x" },
          { name: "up", typeflag: "2", linkTarget: "../outside" },
          { name: "up/secret", content: "overwritten?" },
          { name: "sub/", typeflag: "5" },
          { name: "in", typeflag: "2", linkTarget: "sub" },
          { name: "in/through.txt", content: "x" },
          { name: "y", typeflag: "2", linkTarget: "." },
          { name: "x", typeflag: "2", linkTarget: "y/.." },
          { name: "x/escape.txt", content: "x" },
        ] satisfies CraftedMember[]),
      ),
    );
    expect(r.run.code).toBe(8);
    expect(reasonOf(r, "out")).toMatch(/^symlink to an absolute path/);
    expect(reasonOf(r, "up")).toMatch(/^symlink climbing with '\.\.'/);
    expect(reasonOf(r, "in/through.txt")).toBe("its path goes through a symlink (in)");
    expect(reasonOf(r, "x")).toMatch(/^symlink climbing with '\.\.'/);
    // The refused links were never made, so their names became plain directories inside DIR.
    expect(await tree(r.dest)).toEqual(["in -> sub", "out/", "out/pwned.txt", "sub/", "up/", "up/secret", "x/", "x/escape.txt", "y -> ."]);
  });

  it("refuses hard links out of DIR or to what it did not write, and device nodes; makes hard links to its own files", async () => {
    const r = await extract(
      craftTar([
        { name: "f.txt", content: "mine" },
        { name: "hl-abs", typeflag: "1", linkTarget: "/etc/passwd" },
        { name: "hl-up", typeflag: "1", linkTarget: "../outside/secret" },
        { name: "hl-missing", typeflag: "1", linkTarget: "never-written" },
        { name: "hl-ok", typeflag: "1", linkTarget: "f.txt" },
        { name: "tty", typeflag: "3" },
        { name: "disk", typeflag: "4" },
        { name: "pipe", typeflag: "6" },
      ]),
    );
    expect(r.run.code).toBe(8);
    expect(reasonOf(r, "hl-abs")).toBe("hard link to /etc/passwd: absolute name");
    expect(reasonOf(r, "hl-up")).toBe("hard link to ../outside/secret: '..' in its name");
    expect(reasonOf(r, "hl-missing")).toBe("hard link to never-written, not a file this extraction wrote");
    expect(reasonOf(r, "tty")).toBe("character device: not created");
    expect(reasonOf(r, "disk")).toBe("block device: not created");
    expect(reasonOf(r, "pipe")).toBe("FIFO: not created");
    expect(await tree(r.dest)).toEqual(["f.txt", "hl-ok"]);
    expect((await stat(path.join(r.dest, "hl-ok"))).ino).toBe((await stat(path.join(r.dest, "f.txt"))).ino);
  });

  it("refuses a member over the file cap and stops at the total cap (a zstd bomb), writing nothing of them", async () => {
    const bomb = zstd(craftTar([{ name: "small.txt", content: "s" }, { name: "zeros.bin", content: Buffer.alloc(64 * 1024 * 1024) }, { name: "after.txt", content: "a" }]));
    expect(bomb.length).toBeLessThan(64 * 1024);
    const capped = await extract(bomb, ["--max-file-size", "1MiB"]);
    expect(capped.run.code).toBe(8);
    expect(reasonOf(capped, "zeros.bin")).toBe("67108864 bytes, over the --max-file-size cap of 1048576");
    expect(await tree(capped.dest)).toEqual(["after.txt", "small.txt"]);
    const total = await extract(bomb, ["--max-total-size", "1MiB"]);
    expect(total.run.code).toBe(8);
    expect(total.refused).toEqual([]);
    expect(await tree(total.dest)).toEqual(["small.txt"]);
    expect(total.run.stderr).toMatch(/stopped reading at the --max-total-size cap of 1048576 bytes: raise --max-total-size to read further/);
  });

  it("never overwrites what DIR holds, nor writes through a symlink DIR already had", async () => {
    const r = await extract(craftTar([{ name: "exists.txt", content: "new" }, { name: "had-link/x", content: "x" }, { name: "fresh.txt", content: "f" }]), [], async (dest) => {
      await writeFile(path.join(dest, "exists.txt"), "old");
      await symlink("../outside", path.join(dest, "had-link"));
    });
    expect(r.run.code).toBe(8);
    expect(reasonOf(r, "exists.txt")).toBe("exists in DIR already (not overwritten)");
    expect(reasonOf(r, "had-link/x")).toBe("its path goes through a symlink (had-link)");
    expect(await readFile(path.join(r.dest, "exists.txt"), "utf8")).toBe("old");
    expect(await readFile(path.join(r.dest, "fresh.txt"), "utf8")).toBe("f");
  });

  it("says what it cannot read: a carve that is not a tar (exit 5)", async () => {
    const r = await extract(randomBytes(5000));
    expect(r.run.code).toBe(5);
    expect(r.run.stderr).toMatch(/^carvectl: the archive is not a readable tar: not a tar archive\n$/);
  });
});
