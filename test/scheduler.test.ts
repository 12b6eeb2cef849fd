import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import { createScheduler, type Deadline, MAX_TIMER_MS } from '../core/scheduler.js';
import { manualTime } from './support/time.js';

const DAY = 86_400_000;

/** What the test does to the scheduler, in the order it does it. */
type Step =
  | { kind: 'add'; offset: number }
  | { kind: 'cancel'; pick: number }
  | { kind: 'reschedule'; pick: number; offset: number }
  | { kind: 'advance'; ms: number };

// Offsets from the current time: many equal ones, mostly short, some around and beyond Node's timer limit.
const offset = fc.oneof(
  fc.integer({ min: 1, max: 4 }),
  fc.integer({ min: 1, max: 50 }),
  fc.integer({ min: 1, max: 5 * DAY }),
  fc.integer({ min: MAX_TIMER_MS - 2, max: 4 * MAX_TIMER_MS }),
);
// Mostly adds and cancels, so the heap grows deep enough for a removal from its middle to matter.
const step: fc.Arbitrary<Step> = fc.oneof(
  { weight: 4, arbitrary: fc.record({ kind: fc.constant('add' as const), offset }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('cancel' as const), pick: fc.nat() }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('reschedule' as const), pick: fc.nat(), offset }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('advance' as const), ms: fc.oneof(fc.integer({ min: 0, max: 60 }), offset) }) },
);

describe('deadline scheduler', () => {
  test('fires every deadline once, at its own instant, in deadline order (ties in the order set), never a cancelled one, on one timer', () => {
    fc.assert(
      fc.property(fc.array(step, { maxLength: 300, size: 'max' }), (steps) => {
        const time = manualTime(1_700_000_000_000, (error) => assert.fail(String(error)));
        const { scheduler } = time;
        // The model: every deadline that should still fire, with the order it was (re)set in.
        const model = new Map<number, { at: number; order: number }>();
        const handles: { id: number; deadline: Deadline }[] = [];
        const fired: { id: number; firedAt: number }[] = [];
        let order = 0;
        for (const s of steps) {
          if (s.kind === 'add') {
            const id = handles.length;
            const at = time.now() + s.offset;
            handles.push({ id, deadline: scheduler.at(at, () => fired.push({ id, firedAt: time.now() })) });
            model.set(id, { at, order: order++ });
          } else if (s.kind === 'cancel' && handles.length > 0) {
            const { id, deadline } = handles[s.pick % handles.length]!;
            deadline.cancel();
            model.delete(id);
          } else if (s.kind === 'reschedule' && handles.length > 0) {
            const { id, deadline } = handles[s.pick % handles.length]!;
            const at = time.now() + s.offset;
            deadline.reschedule(at);
            model.set(id, { at, order: order++ });
          } else if (s.kind === 'advance') {
            const target = time.now() + s.ms;
            const due = [...model.entries()].filter(([, m]) => m.at <= target).sort(([, a], [, b]) => a.at - b.at || a.order - b.order);
            fired.length = 0;
            time.advance(s.ms);
            assert.deepEqual(
              fired.map((f) => f.id),
              due.map(([id]) => id),
              'fired exactly what was due, in order',
            );
            for (const [id, m] of due) {
              assert.equal(fired.find((f) => f.id === id)!.firedAt, m.at, 'fired at its deadline, not before or after');
              model.delete(id);
            }
          }
          assert.equal(scheduler.size, model.size, 'pending deadlines match');
          assert.equal(time.timer.armed, model.size > 0 ? 1 : 0, 'one timer while anything is pending, none otherwise');
          for (const { id, deadline } of handles) assert.equal(deadline.pending, model.has(id));
        }
      }),
      { numRuns: 200 },
    );
  });

  test('equal deadlines fire in the order they were set', () => {
    const time = manualTime(0);
    const order: string[] = [];
    for (const name of ['a', 'b', 'c', 'd']) time.scheduler.at(100, () => order.push(name));
    const b = time.scheduler.at(100, () => order.push('late'));
    b.reschedule(100);
    time.scheduler.at(50, () => order.push('first'));
    time.advance(99);
    assert.deepEqual(order, ['first']);
    time.advance(1);
    assert.deepEqual(order, ['first', 'a', 'b', 'c', 'd', 'late']);
  });

  test('a deadline beyond the longest Node timer is neither fired early nor lost', () => {
    const time = manualTime(0);
    let firedAt: number | undefined;
    time.scheduler.at(30 * DAY, () => (firedAt = time.now()));
    time.advance(25 * DAY);
    assert.equal(firedAt, undefined, 'not fired when the first 24.8-day timer ran out');
    time.advance(5 * DAY - 1);
    assert.equal(firedAt, undefined);
    time.advance(1);
    assert.equal(firedAt, 30 * DAY);
  });

  test('a deadline may move or cancel others, and add new ones, while it fires', () => {
    const time = manualTime(0);
    const seen: string[] = [];
    const later = time.scheduler.at(20, () => seen.push('later'));
    const doomed = time.scheduler.at(10, () => seen.push('doomed'));
    time.scheduler.at(10, () => {
      seen.push('first');
      later.reschedule(5);
      time.scheduler.at(30, () => seen.push('added'));
    });
    time.scheduler.at(10, () => doomed.cancel());
    // Moved behind the deadline that cancels it, so it is cancelled while the due ones are firing.
    doomed.reschedule(10);
    time.advance(10);
    assert.deepEqual(seen, ['first', 'later']);
    time.advance(100);
    assert.deepEqual(seen, ['first', 'later', 'added']);
    assert.equal(time.scheduler.size, 0);
    assert.equal(time.timer.armed, 0);
  });

  test('a failing callback is reported and the deadlines after it still fire', () => {
    const errors: unknown[] = [];
    const time = manualTime(0, (error) => errors.push(error));
    const seen: number[] = [];
    time.scheduler.at(1, () => {
      throw new Error('boom');
    });
    time.scheduler.at(1, () => seen.push(1));
    time.scheduler.at(2, () => seen.push(2));
    time.advance(2);
    assert.deepEqual(seen, [1, 2]);
    assert.equal((errors[0] as Error).message, 'boom');
  });

  test('a NaN deadline is refused rather than stuck at the top of the heap', () => {
    const time = manualTime(0);
    assert.throws(() => time.scheduler.at(Number.NaN, () => {}), RangeError);
    assert.equal(time.scheduler.size, 0);
  });

  test('in production it runs on setTimeout and Date.now, and fires only once the deadline is reached', async () => {
    const scheduler = createScheduler();
    const at = Date.now() + 5;
    // The scheduler's timer is unref'd, so something else must keep the test process alive meanwhile.
    const alive = setInterval(() => {}, 1000);
    const firedAt = await new Promise<number>((resolve) => scheduler.at(at, () => resolve(Date.now()))).finally(() => clearInterval(alive));
    assert.ok(firedAt >= at, 'not before its deadline');
    assert.equal(scheduler.size, 0);
  });
});
