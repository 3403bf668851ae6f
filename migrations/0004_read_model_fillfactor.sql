-- Read models whose rows are updated in place on every batch (counters, last readings,
-- energy sums) keep room on each page, so that updates stay on the page (HOT) and do not
-- touch the indexes.
ALTER TABLE buildings SET (fillfactor = 70);
ALTER TABLE sensors SET (fillfactor = 70);
ALTER TABLE energy_hourly SET (fillfactor = 70);
ALTER TABLE energy_daily SET (fillfactor = 70);
