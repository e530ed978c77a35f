/** The hand-written check of block bodies must accept exactly what blockBodySchema accepts. */
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { plainBlockBody } from "../../src/http/agent-routes.js";
import { blockBodySchema } from "../../src/http/agent-schemas.js";

const anyValue = fc.oneof(
  fc.integer({ min: -5, max: 5 }),
  fc.constantFrom(0, 1, 2 ** 53 - 1, 2 ** 53, -1, 1.5, Number.NaN, Infinity, -0),
  fc.string({ maxLength: 10 }),
  fc.constantFrom("abc", "a".repeat(128), "a".repeat(129), "r".repeat(256), "r".repeat(257), "../etc", "a/b", ".a", "A-b_c.9"),
  fc.constant(null),
  fc.boolean(),
  fc.array(fc.integer(), { maxLength: 2 }),
  fc.constant(Buffer.from("QUJD")),
  fc.dictionary(fc.string({ maxLength: 3 }), fc.integer(), { maxKeys: 2 }),
);

const bodies = fc.oneof(
  fc.record(
    { block_id: anyValue, session_id: anyValue, request_id: anyValue, data: anyValue, extra: anyValue },
    { requiredKeys: [] },
  ),
  anyValue,
);

describe("plainBlockBody", () => {
  it("agrees with blockBodySchema on every body", () => {
    fc.assert(
      fc.property(bodies, (body) => {
        const plain = plainBlockBody(body);
        const parsed = blockBodySchema.safeParse(body);
        expect(plain !== null).toBe(parsed.success);
        if (plain && parsed.success) expect(plain).toEqual(parsed.data);
      }),
      { numRuns: 5000 },
    );
  });

  it("accepts an agent's block with its data as bytes", () => {
    const data = Buffer.from("QUJD");
    expect(plainBlockBody({ block_id: 3, session_id: "0123abcd", request_id: "r-1", data })).toEqual({ block_id: 3, session_id: "0123abcd", request_id: "r-1", data });
  });
});
