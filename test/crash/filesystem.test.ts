/** Crash rounds on the filesystem backend (test/crash/rounds.ts). */
import { crashSuite } from "./suite.js";

crashSuite("filesystem", []);
