"""Reports: self-contained HTML pages rendered from what the other stages computed."""
