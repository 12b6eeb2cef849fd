// The registry owns the devices, certificates, CA certificates, tokens, audit and change tables. Every other part
// reads and writes them through these functions only.
export * from './audit.js';
export * from './ca-certificates.js';
export * from './broker-nodes.js';
export * from './certificates.js';
export * from './changes.js';
export * from './crls.js';
export * from './change-feed.js';
export * from './devices.js';
export * from './enrollment.js';
export * from './enrollment-tokens.js';
export * from './event-feed.js';
export * from './event-retention.js';
export * from './events.js';
export * from './fleet-audits.js';
export * from './identity-kinds.js';
export * from './issuance.js';
export * from './operators.js';
export * from './operator-sessions.js';
export * from './presence.js';
export * from './renewal.js';
export { ENROLLMENT_TOKEN_PREFIX, OPERATOR_TOKEN_PREFIX } from './secrets.js';
export * from './certificate-list.js';
export * from './device-list.js';
export * from './fleet-summary.js';
export { encodeCursor, MAX_PAGE_SIZE } from './page-cursor.js';
