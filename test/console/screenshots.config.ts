import { defineConfig } from "vitest/config";

/** scripts/console-screenshots.sh: the README's pictures of the console, not part of npm test. */
export default defineConfig({
  test: {
    include: ["test/console/screenshots.ts"],
    testTimeout: 180_000,
    hookTimeout: 180_000,
    reporters: ["default"],
  },
});
