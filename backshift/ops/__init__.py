"""Operations: what each command does, testable without a terminal."""
