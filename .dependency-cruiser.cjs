/*
 * The layering of src/ (issue 14): dependencies point inward, http -> services -> storage contracts, and the
 * storage implementations are reached only through src/storage/factory.ts. `npm run lint` runs this on src/;
 * test/lint/layering.test.ts proves each rule fails on a broken copy.
 */

/** Backends: only the factory (and each other) may import them. */
const IMPLEMENTATIONS = "^src/storage/(filesystem|gridfs|sqlite|mongo|s3)";

/** @type {import('dependency-cruiser').IConfiguration} */
module.exports = {
  forbidden: [
    {
      name: "no-circular",
      severity: "error",
      comment: "An import cycle: modules that cannot be understood, tested or loaded one without the other.",
      from: { path: "^src/" },
      to: { circular: true },
    },
    {
      name: "no-circular-folders",
      severity: "error",
      comment:
        "Folders of src/ that import each other (storage/ -> carves/ -> storage/): the layers are " +
        "tangled even when no single module cycle exists.",
      scope: "folder",
      from: { path: "^src/" },
      to: { circular: true },
    },
    {
      name: "http-only-inward",
      severity: "error",
      comment:
        "http/ answers requests by calling services/; it reads records (storage/model.ts, storage/contracts.ts) " +
        "but never a store.",
      from: { path: "^src/http/" },
      to: { path: "^src/storage/", pathNot: "^src/storage/(model|contracts)[.]ts$" },
    },
    {
      name: "http-no-outer-layers",
      severity: "error",
      comment: "http/ is called by the composition root (src/server.ts), never the other way round.",
      from: { path: "^src/http/" },
      to: { path: "^src/(jobs|cli)/|^src/(server|main)[.]ts$" },
    },
    {
      name: "services-not-http",
      severity: "error",
      comment: "services/ holds the rules for every caller (HTTP, jobs, CLIs): it knows nothing of HTTP.",
      from: { path: "^src/services/" },
      to: { path: "^src/http/" },
    },
    {
      name: "services-not-implementations",
      severity: "error",
      comment: "services/ works on the storage contracts; which backend is behind them is the factory's choice.",
      from: { path: "^src/services/" },
      to: { path: IMPLEMENTATIONS },
    },
    {
      name: "storage-not-outer-layers",
      severity: "error",
      comment: "storage/ is the innermost layer with I/O: it never calls the services or HTTP built on it.",
      from: { path: "^src/storage/" },
      to: { path: "^src/(services|http)/" },
    },
    {
      name: "implementations-only-via-factory",
      severity: "error",
      comment: "A backend is opened by src/storage/factory.ts only: everything else depends on the contracts.",
      from: { path: "^src/", pathNot: `^src/storage/factory[.]ts$|${IMPLEMENTATIONS}` },
      to: { path: IMPLEMENTATIONS },
    },
  ],
  options: {
    doNotFollow: { path: "node_modules" },
    exclude: { path: "^(dist|node_modules)/" },
    tsPreCompilationDeps: true,
    tsConfig: { fileName: "tsconfig.json" },
    enhancedResolveOptions: { exportsFields: ["exports"], conditionNames: ["import", "require", "node", "default"] },
  },
};
