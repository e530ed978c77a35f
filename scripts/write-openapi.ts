/**
 * Writes docs/openapi.json from the contract (src/http/api-contract.ts): `npm run openapi` after changing
 * it. test/http/openapi-contract.test.ts fails while the checked-in file differs from what this writes.
 */
import { writeFileSync } from "node:fs";
import path from "node:path";
import { openApiText } from "../src/http/openapi.js";

const target = path.resolve(import.meta.dirname, "../../docs/openapi.json");
writeFileSync(target, openApiText());
process.stdout.write(`wrote ${target}\n`);
