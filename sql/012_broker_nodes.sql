-- Presence per broker node. Each node (a machine's broker, or one worker process of it) holds a lease
-- it renews while it runs; each connected device names the node that holds its session. A node that
-- stops cleanly clears its own devices and drops its lease; the devices of a node that died are
-- cleared by any other node once that node's lease has expired, and by the node itself when it
-- starts again under the same id.
CREATE TABLE broker_nodes (
  id               text PRIMARY KEY CHECK (length(id) BETWEEN 1 AND 200),
  started_at       timestamptz NOT NULL,
  lease_expires_at timestamptz NOT NULL
);
CREATE INDEX broker_nodes_lease_idx ON broker_nodes (lease_expires_at);

ALTER TABLE devices ADD COLUMN connected_node text;
CREATE INDEX devices_connected_node_idx ON devices (connected_node) WHERE connected;
