/**
 * The few MQTT 3.1.1 packets the benchmark needs, as bytes: the load generator writes them and the
 * floor server answers them. Hand-built so no MQTT library's CPU sits on either side of the
 * measurement (mqtt.js costs more per packet than the floor does).
 */

export const PacketType = {
  connect: 1,
  connack: 2,
  publish: 3,
  puback: 4,
  pingreq: 12,
  pingresp: 13,
  disconnect: 14,
} as const;

export interface Packet {
  type: number;
  flags: number;
  body: Buffer;
}

/** The remaining-length field: 7 bits a byte, high bit set while more bytes follow. */
function remainingLength(length: number): Buffer {
  const bytes: number[] = [];
  do {
    let byte = length % 128;
    length = Math.floor(length / 128);
    if (length > 0) byte |= 0x80;
    bytes.push(byte);
  } while (length > 0);
  return Buffer.from(bytes);
}

const packet = (firstByte: number, body: Buffer) => Buffer.concat([Buffer.from([firstByte]), remainingLength(body.length), body]);

const utf8Field = (text: string) => {
  const bytes = Buffer.from(text, 'utf8');
  const length = Buffer.alloc(2);
  length.writeUInt16BE(bytes.length);
  return Buffer.concat([length, bytes]);
};

/** CONNECT with a clean session and no credentials: the client certificate is the identity. */
export function connectPacket(clientId: string, keepaliveSeconds = 60): Buffer {
  const header = Buffer.from([0x00, 0x04, 0x4d, 0x51, 0x54, 0x54, 0x04, 0x02, keepaliveSeconds >> 8, keepaliveSeconds & 0xff]);
  return packet(PacketType.connect << 4, Buffer.concat([header, utf8Field(clientId)]));
}

/** PUBLISH at QoS 0 (no packet id) or QoS 1 (with one). */
export function publishPacket(topic: string, payload: Buffer, qos: 0 | 1, packetId = 1): Buffer {
  const parts: Buffer[] = [utf8Field(topic)];
  if (qos === 1) parts.push(Buffer.from([packetId >> 8, packetId & 0xff]));
  parts.push(payload);
  return packet((PacketType.publish << 4) | (qos << 1), Buffer.concat(parts));
}

export const connackPacket = (returnCode = 0) => Buffer.from([PacketType.connack << 4, 2, 0, returnCode]);
export const pubackPacket = (packetId: number) => Buffer.from([PacketType.puback << 4, 2, packetId >> 8, packetId & 0xff]);
export const PINGREQ = Buffer.from([PacketType.pingreq << 4, 0]);
export const PINGRESP = Buffer.from([PacketType.pingresp << 4, 0]);
export const DISCONNECT = Buffer.from([PacketType.disconnect << 4, 0]);

/** The packet id of a QoS 1 PUBLISH: after the topic. */
export const publishPacketId = (body: Buffer) => body.readUInt16BE(2 + body.readUInt16BE(0));

/**
 * Splits a byte stream into packets. Returns the packets complete so far and keeps the rest; throws
 * on a remaining length longer than the four bytes MQTT allows.
 */
export function packetReader(): (chunk: Buffer) => Packet[] {
  let pending: Buffer = Buffer.alloc(0);
  return (chunk) => {
    pending = pending.length === 0 ? chunk : Buffer.concat([pending, chunk]);
    const packets: Packet[] = [];
    for (;;) {
      if (pending.length < 2) break;
      let length = 0;
      let multiplier = 1;
      let offset = 1;
      let complete = false;
      while (offset < pending.length) {
        const byte = pending[offset++]!;
        length += (byte & 0x7f) * multiplier;
        if ((byte & 0x80) === 0) {
          complete = true;
          break;
        }
        multiplier *= 128;
        if (offset > 4) throw new Error('malformed remaining length');
      }
      if (!complete || pending.length < offset + length) break;
      packets.push({ type: pending[0]! >> 4, flags: pending[0]! & 0x0f, body: pending.subarray(offset, offset + length) });
      pending = pending.subarray(offset + length);
    }
    return packets;
  };
}
