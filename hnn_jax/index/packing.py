"""Codes packed into 64-bit words (64 bits each, most significant first, padding bits zero), one
column per code ([words per code, count]), so a query's Hamming distances are one XOR and one
popcount (``np.bitwise_count``) per word over the whole column."""

import numpy as np

MAX_BITS = 65535  # distances are accumulated in uint16


def words_per_code(nbits: int) -> int:
    return -(-nbits // 64)


def pack_bits(bits: np.ndarray, nwords: int) -> np.ndarray:
    """[m, nbits] 0/1 -> [nwords, m] uint64; each word holds 64 bits, most significant first."""
    m, nbits = bits.shape
    if nbits != nwords * 64:
        padded = np.zeros((m, nwords * 64), np.uint8)
        padded[:, :nbits] = bits
        bits = padded
    words = np.packbits(bits, axis=1).view(">u8").astype(np.uint64)
    return np.ascontiguousarray(words.T)


def unpack_words(words: np.ndarray, nbits: int) -> np.ndarray:
    """[nwords] uint64 -> [nbits] 0/1 (inverse of pack_bits for one code)."""
    return np.unpackbits(np.asarray(words, np.uint64).astype(">u8").view(np.uint8))[:nbits]


def hamming_distances(words: np.ndarray, q: np.ndarray, nbits: int) -> np.ndarray:
    """Distance from packed query `q` to every column of `words` [nwords, count] (uint8 for codes
    up to 255 bits, else uint16)."""
    dist = np.bitwise_count(np.bitwise_xor(words[0], q[0]))
    if len(q) > 1:
        if nbits > 255:
            dist = dist.astype(np.uint16)
        for j in range(1, len(q)):
            dist += np.bitwise_count(np.bitwise_xor(words[j], q[j]))
    return dist


def prefix_distances(words: np.ndarray, q: np.ndarray, prefix_bits: int | None,
                     columns: np.ndarray | slice) -> np.ndarray:
    """Distance over the first `prefix_bits` bits (a code's architecture part) from packed query
    `q` to the given columns of `words` (int64)."""
    dist = np.zeros(words[0, columns].shape, np.int64)
    for j in range(min(len(q), -(-(prefix_bits or 0) // 64))):
        take = min(64, prefix_bits - 64 * j)  # the word's first `take` bits (most significant)
        mask = np.uint64(((1 << take) - 1) << (64 - take))
        dist += np.bitwise_count(np.bitwise_xor(words[j, columns], q[j]) & mask)
    return dist
