import { describe, expect, it } from "vitest";
import { ByteBudget, type BudgetHolder } from "../../src/util/byte-budget.js";

/** A body read in pieces: takes each piece from the budget, waiting when told to, as body.ts does. */
function reader(budget: ByteBudget): { holder: BudgetHolder; take(bytes: number): Promise<void> } {
  const holder: BudgetHolder = { held: 0 };
  return {
    holder,
    async take(bytes: number) {
      const wait = budget.take(bytes, holder);
      if (wait !== null) await wait;
      holder.held += bytes;
    },
  };
}

const settled = async (p: Promise<unknown>): Promise<boolean> => {
  let done = false;
  void p.then(() => (done = true));
  await new Promise((r) => setImmediate(r));
  return done;
};

describe("ByteBudget", () => {
  it("bodies that each hold part of a full budget cannot wait on each other forever: the oldest goes on", async () => {
    const budget = new ByteBudget(100);
    const readers = Array.from({ length: 4 }, () => reader(budget));
    // Each of four bodies of 60 bytes has its first 30 bytes in: three fit, the fourth waits.
    for (const r of readers.slice(0, 3)) await r.take(30);
    const fourthFirst = (readers[3] as ReturnType<typeof reader>).take(30);
    expect(await settled(fourthFirst)).toBe(false);
    expect(budget.inUse).toBe(90);
    // The second halves: without the senior rule none fits (90 + 30 > 100) and nothing ever moves again.
    const firstSecond = (readers[0] as ReturnType<typeof reader>).take(30);
    expect(await settled(firstSecond), "the oldest body may take past the capacity").toBe(true);
    expect(budget.inUse).toBe(120);
    const secondSecond = (readers[1] as ReturnType<typeof reader>).take(30);
    expect(await settled(secondSecond), "a younger body waits while the budget is over").toBe(false);
    // The oldest finishes and gives back: the next oldest becomes the senior and goes on, then the others.
    budget.release((readers[0] as ReturnType<typeof reader>).holder);
    expect(await settled(secondSecond)).toBe(true);
    budget.release((readers[1] as ReturnType<typeof reader>).holder);
    expect(await settled(fourthFirst)).toBe(true);
    await (readers[2] as ReturnType<typeof reader>).take(30); // the senior now
    const lastSecond = (readers[3] as ReturnType<typeof reader>).take(30);
    expect(await settled(lastSecond)).toBe(false); // 90 + 30: over, and not the senior
    budget.release((readers[2] as ReturnType<typeof reader>).holder);
    expect(await settled(lastSecond)).toBe(true);
    budget.release((readers[3] as ReturnType<typeof reader>).holder);
    expect(budget.inUse).toBe(0);
    expect(budget.queued).toBe(0);
  });

  it("memory stays under the capacity plus one body: only the senior takes past the capacity", async () => {
    const budget = new ByteBudget(100);
    const a = reader(budget);
    const b = reader(budget);
    const c = reader(budget);
    await a.take(50);
    await b.take(50);
    const cWaits = c.take(10);
    const bWaits = b.take(10);
    await a.take(40); // the senior: past the capacity
    expect(budget.inUse).toBe(140);
    expect(await settled(bWaits)).toBe(false);
    expect(await settled(cWaits)).toBe(false);
    budget.release(a.holder); // 50 in use: b is the senior now, c waits its turn in order
    expect(await settled(cWaits)).toBe(true);
    expect(await settled(bWaits)).toBe(true);
    expect(budget.inUse).toBe(70);
  });

  it("a body released while its take waits gets the grant, to give back itself (as a failed read does)", async () => {
    const budget = new ByteBudget(100);
    const a = reader(budget);
    const b = reader(budget);
    await a.take(100);
    let granted = false;
    const wait = budget.take(20, b.holder);
    expect(wait).not.toBeNull();
    void wait?.then(() => {
      granted = true;
      budget.give(20);
    });
    budget.release(b.holder);
    await new Promise((r) => setImmediate(r));
    expect(granted).toBe(true);
    expect(budget.queued).toBe(0);
    budget.release(a.holder);
    expect(budget.inUse).toBe(0);
  });

  it("first come, first served below the senior: a large wait is not overtaken by small ones", async () => {
    const budget = new ByteBudget(100);
    const a = reader(budget);
    await a.take(80);
    const big = reader(budget);
    const small = reader(budget);
    const bigWaits = big.take(50);
    const smallWaits = small.take(10); // 10 would fit, but the big one came first
    expect(await settled(smallWaits)).toBe(false);
    budget.release(a.holder);
    expect(await settled(bigWaits)).toBe(true);
    expect(await settled(smallWaits)).toBe(true);
  });

  it("a take that waits is granted what it asked to take ahead, at once; one granted at once gets only its bytes", async () => {
    const budget = new ByteBudget(100);
    const a = reader(budget);
    const b: BudgetHolder = { held: 0 };
    await a.take(60);
    expect(budget.take(10, b, 50), "room now: no more than asked").toBeNull();
    b.held += 10;
    const c: BudgetHolder = { held: 0 };
    const wait = budget.take(40, c, 70); // 110 > 100: waits, for 70
    expect(wait).not.toBeNull();
    budget.release(b); // 60 in use: 70 does not fit yet
    let granted = 0;
    void wait?.then((n) => (granted = n));
    await new Promise((r) => setImmediate(r));
    expect(granted).toBe(0);
    budget.release(a.holder); // 0 in use (c is the senior now anyway)
    await new Promise((r) => setImmediate(r));
    expect(granted).toBe(70);
    expect(budget.inUse).toBe(70);
  });

  it("acquire without a holder keeps its plain semaphore behaviour", async () => {
    const slots = new ByteBudget(2);
    const r1 = await slots.acquire(1);
    const r2 = await slots.acquire(1);
    const third = slots.acquire(1);
    expect(await settled(third)).toBe(false);
    r1();
    r1(); // a second call gives nothing back twice
    expect(await settled(third)).toBe(true);
    expect(slots.inUse).toBe(2);
    r2();
    (await third)();
    expect(slots.inUse).toBe(0);
  });
});
