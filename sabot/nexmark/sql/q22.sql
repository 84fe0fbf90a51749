-- Source: https://github.com/nexmark/nexmark, file nexmark-flink/src/main/resources/queries/q22.sql
-- (see Provenance).
-- Copyright the Nexmark authors; licensed under the Apache License, Version 2.0
-- (http://www.apache.org/licenses/LICENSE-2.0). Attribution header added by Sabot.
-- Provenance: q22.sql is NOT in the stored copy of nexmark/nexmark. The text below is taken
-- from two third-party copies that quote it: a dated snapshot of master's q22.sql (sink
-- nexmark_q22, used here) and an older copy with sink discard_sink; their query bodies agree.
-- Whitespace at the end of the file could not be checked against the original.
-- ==== published text below, unchanged ====
-- -------------------------------------------------------------------------------------------------
-- Query 22: Get URL Directories (Not in original suite)
-- -------------------------------------------------------------------------------------------------
-- What is the directory structure of the URL?
-- Illustrates a SPLIT_INDEX SQL.
-- -------------------------------------------------------------------------------------------------

CREATE TABLE nexmark_q22 (
      auction  BIGINT,
      bidder  BIGINT,
      price  BIGINT,
      channel  VARCHAR,
      dir1  VARCHAR,
      dir2  VARCHAR,
      dir3  VARCHAR
) WITH (
    'connector' = 'blackhole'
);

INSERT INTO nexmark_q22
SELECT
    auction, bidder, price, channel,
    SPLIT_INDEX(url, '/', 3) as dir1,
    SPLIT_INDEX(url, '/', 4) as dir2,
    SPLIT_INDEX(url, '/', 5) as dir3 FROM bid;