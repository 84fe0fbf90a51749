-- Source: https://github.com/nexmark/nexmark, file nexmark-flink/src/main/resources/queries/q11.sql
-- (see Provenance).
-- Copyright the Nexmark authors; licensed under the Apache License, Version 2.0
-- (http://www.apache.org/licenses/LICENSE-2.0). Attribution header added by Sabot.
-- Provenance: the index holds three versions of this file: commit
-- 0f96e93c85ae6f5c29116f8b736e95cb5dc5a318 (B.dateTime without backquotes), commit
-- d3ba063984a039bca6d01c2c6d45b31508bd7e8d (dateTime renamed customTime), and one it did not
-- return. The text below is the 0f96e93 text with B.`dateTime` backquoted three times, as every
-- other query of the same (master) generation quotes it and as a dated copy of master's q11.sql
-- quotes it; nothing else differs.
-- ==== published text below, unchanged ====
-- -------------------------------------------------------------------------------------------------
-- Query 11: User Sessions (Not in original suite)
-- -------------------------------------------------------------------------------------------------
-- How many bids did a user make in each session they were active? Illustrates session windows.
--
-- Group bids by the same user into sessions with max session gap.
-- Emit the number of bids per session.
-- -------------------------------------------------------------------------------------------------

CREATE TABLE nexmark_q11 (
  bidder BIGINT,
  bid_count BIGINT,
  starttime TIMESTAMP(3),
  endtime TIMESTAMP(3)
) WITH (
  'connector' = 'blackhole'
);

INSERT INTO nexmark_q11
SELECT
    B.bidder,
    count(*) as bid_count,
    SESSION_START(B.`dateTime`, INTERVAL '10' SECOND) as starttime,
    SESSION_END(B.`dateTime`, INTERVAL '10' SECOND) as endtime
FROM bid B
GROUP BY B.bidder, SESSION(B.`dateTime`, INTERVAL '10' SECOND);