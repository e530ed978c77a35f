/** Crash rounds on the GridFS backend, on the MongoDB-wire test server (test/crash/rounds.ts). */
import { crashSuite } from "./suite.js";

crashSuite("gridfs", []);
