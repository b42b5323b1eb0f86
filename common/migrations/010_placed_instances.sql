-- Instances placed on a node but not started yet (waiting for the room a reclaimed
-- instance still holds, or for their startup group): few, looked for at every pass.
CREATE INDEX instances_placed ON instances (node) WHERE state = 'placed';
