/** Public API of the osquery carve agent emulator. */
export { buildCarveArchive, sha256File, ZSTD_MAGIC } from "./archive.js";
export type { ArchiveStyle, BuildCarveArchiveOptions, CarveArchive, CarveArchiveMember } from "./archive.js";
export { runCarve, compareVersions, endpointPath } from "./agent.js";
export type {
  CarveInjectOptions,
  CarveRequestRecord,
  CarveResult,
  CarveStatus,
  CarveTlsOptions,
  RequestKind,
  RequestVariant,
  RunCarveOptions,
} from "./agent.js";
export { main as cliMain } from "./cli.js";
