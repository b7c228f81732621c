/**
 * Whether units record where they are opened (for the long-unit warning): a stack capture costs microseconds per
 * unit, so it is on only once an Engine was given `longUnitThreshold` explicitly (process-wide).
 *
 * @internal
 */
export const unitSites = { capture: false }
