"""Pages (HTML) and the JSON API; both call the same functions."""
