import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    globalSetup: ["test/setup/mongo-wire.ts"],
    testTimeout: 120_000,
    hookTimeout: 120_000,
    // The suites start real servers and child processes; two cores do not gain from many workers.
    maxWorkers: 2,
    reporters: ["default"],
  },
});
