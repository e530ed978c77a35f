import { afterAll, beforeAll } from "vitest";
import { startSeaweedFs, type SeaweedFs } from "../../support/seaweedfs.js";
import { s3Harness } from "../s3/harness.js";
import { blobStoreConformance } from "./blob-suite.js";

// One real SeaweedFS for the file (S3 authentication on); each case has its own key prefix and staging directory.
let server: SeaweedFs;
beforeAll(async () => {
  server = await startSeaweedFs();
}, 30 * 60_000);
afterAll(async () => {
  await server?.destroy();
});

blobStoreConformance("s3 (SeaweedFS, filesystem staging)", async () => {
  const h = await s3Harness(server);
  return { open: () => h.open(), destroy: () => h.destroy(), leftovers: () => h.leftovers() };
});
