-- Source: https://github.com/nexmark/nexmark, file nexmark-flink/src/main/resources/queries/q12.sql
-- (see Provenance).
-- Copyright the Nexmark authors; licensed under the Apache License, Version 2.0
-- (http://www.apache.org/licenses/LICENSE-2.0). Attribution header added by Sabot.
-- Provenance: the only stored version (commit 63b8d3163c4b8df5d7ca6763ca7f6fcda9032c53) names
-- its sink discard_sink; master renamed every sink to nexmark_qN (q0..q21 here all have it).
-- The text below is the 63b8d31 text with discard_sink -> nexmark_q12 (two places), matching a
-- dated copy of master's q12.sql; nothing else differs.
-- ==== published text below, unchanged ====
-- -------------------------------------------------------------------------------------------------
-- Query 12: Processing Time Windows (Not in original suite)
-- -------------------------------------------------------------------------------------------------
-- How many bids does a user make within a fixed processing time limit?
-- Illustrates working in processing time window.
--
-- Group bids by the same user into processing time windows of 10 seconds.
-- Emit the count of bids per window.
-- -------------------------------------------------------------------------------------------------

CREATE TABLE nexmark_q12 (
  bidder BIGINT,
  bid_count BIGINT,
  starttime TIMESTAMP(3),
  endtime TIMESTAMP(3)
) WITH (
  'connector' = 'blackhole'
);

CREATE VIEW B AS SELECT *, PROCTIME() as p_time FROM bid;

INSERT INTO nexmark_q12
SELECT
    bidder,
    count(*) as bid_count,
    window_start AS starttime,
    window_end AS endtime
FROM TABLE(
        TUMBLE(TABLE B, DESCRIPTOR(p_time), INTERVAL '10' SECOND))
GROUP BY bidder, window_start, window_end;