from dataclasses import replace

from vpnca.audit import GENESIS_HASH, ChainEntry, entry_hash, verify_chain


def chain(n: int) -> list[ChainEntry]:
    entries, prev = [], GENESIS_HASH
    for seq in range(1, n + 1):
        fields = (f"2026-01-01T00:00:{seq:02d}", "op", "issue", f'{{"serial":"{seq:x}"}}')
        digest = entry_hash(prev, seq, *fields)
        entries.append(ChainEntry(seq, *fields, prev, digest))
        prev = digest
    return entries


def test_intact_chain_verifies() -> None:
    result = verify_chain(chain(5))
    assert result.ok and result.entries == 5 and result.head_hash == chain(5)[-1].entry_hash


def test_edited_entry_is_named() -> None:
    entries = chain(5)
    entries[2] = replace(entries[2], details='{"serial":"ff"}')
    assert [p.seq for p in verify_chain(entries).problems] == [3]


def test_removed_entry_is_named() -> None:
    entries = chain(5)
    del entries[1]
    problems = verify_chain(entries).problems
    assert problems and all(p.seq == 3 for p in problems)


def test_reordered_entries_are_named() -> None:
    entries = chain(5)
    entries[1], entries[2] = entries[2], entries[1]
    assert {p.seq for p in verify_chain(entries).problems} >= {3, 2}
