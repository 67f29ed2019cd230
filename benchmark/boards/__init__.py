"""Leaderboards: schemas and atomic upserts (`leaderboard`), the regression comparison (`check`), the papers' numbers
(`published`), the report and its plots (`report`, `plots`)."""
