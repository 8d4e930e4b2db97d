"""Operations: status checks, backups and restores."""
