/*
 * What may appear in a topic name or filter, whatever the policy says. MQTT 3.1.1 §1.5.3 forbids
 * U+0000 and ill-formed UTF-8 and lets a receiver close on control characters and noncharacters;
 * libmosquitto does close on all of them, so forwarding one knocks every libmosquitto subscriber off
 * (again and again while it is retained).
 *
 * mqtt-packet decodes strings with Buffer#toString('utf8'), which turns every ill-formed sequence
 * (stray continuation bytes, overlong forms, encoded surrogates, bytes past U+10FFFF) into U+FFFD, and
 * the raw bytes are gone by the time a hook runs. So U+FFFD is refused too: it is almost always the
 * trace of bytes that were not UTF-8, and forwarding it would also merge distinct byte strings into
 * one topic. A genuine U+FFFD in a topic is the price, and no device of ours has a reason to send one.
 */
const FORBIDDEN = new RegExp(
  '[\\u0000-\\u001f\\u007f-\\u009f\\ufdd0-\\ufdef\\ufffd\\ufffe\\uffff' +
    // The last two code points of every supplementary plane are noncharacters too.
    Array.from({ length: 16 }, (_, plane) => `\\u{${(plane + 1).toString(16)}fffe}\\u{${(plane + 1).toString(16)}ffff}`).join('') +
    ']',
  'u',
);

/** Whether a topic name or filter holds only characters every MQTT 3.1.1 receiver accepts. */
export function isValidTopicText(topic: string): boolean {
  return !FORBIDDEN.test(topic);
}
