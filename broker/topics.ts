/**
 * A device owns the topic tree devices/<its id>/…: it may publish and subscribe there and nowhere
 * else. A filter whose first two levels are not literally `devices` and the device's id (a wildcard,
 * $share, $SYS, another id) could reach outside, so it is refused.
 */
function ownsLevels(deviceId: string, levels: string[]): boolean {
  return levels.length >= 3 && levels[0] === 'devices' && levels[1] === deviceId;
}

export function mayPublish(deviceId: string, topic: string): boolean {
  if (topic.includes('+') || topic.includes('#')) return false;
  return ownsLevels(deviceId, topic.split('/'));
}

export function maySubscribe(deviceId: string, filter: string): boolean {
  return ownsLevels(deviceId, filter.split('/'));
}
