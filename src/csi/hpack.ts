/**
 * In-place rewriting of the `:authority` field of an HPACK header block (RFC 7541). Each
 * character that an authority may not contain becomes one that it may. The new character has the
 * same length as a byte and as a Huffman code, so the block keeps its size.
 */
import { HUFFMAN_CODES, HUFFMAN_LENGTHS } from "./_huffman.ts";

/**
 * Rewrites the `:authority` values of one HPACK header block in place and returns how many it
 * changed. Fields whose name refers to the dynamic table are not inspected: HPACK encoders name
 * `:authority` by its static index or literally.
 *
 * @throws RangeError when the block does not parse.
 */
export function rewriteHeaderBlock(block: Uint8Array): number {
  let offset = 0;
  let changed = 0;

  while (offset < block.length) {
    const first = block[offset]!;

    if (first & 0x80) {
      offset = readInteger(block, offset, 7).next;
      continue;
    }
    if ((first & 0xe0) === 0x20) {
      offset = readInteger(block, offset, 5).next;
      continue;
    }

    const prefix = (first & 0xc0) === 0x40 ? 6 : 4;
    const name = readInteger(block, offset, prefix);
    offset = name.next;

    let isAuthority = name.value === STATIC_AUTHORITY;
    if (name.value === 0) {
      const literal = readString(block, offset);
      isAuthority = decodeString(block, literal) === ":authority";
      offset = literal.end;
    }

    const value = readString(block, offset);
    if (isAuthority && rewriteValue(block, value)) changed += 1;
    offset = value.end;
  }
  return changed;
}

// ---------------------------------------------------------------------------------------------

/** Index of `:authority` in the HPACK static table. */
const STATIC_AUTHORITY = 1;

/** Characters RFC 3986 allows in an authority: unreserved, sub-delims, `:`, `@`, `[`, `]` and `%`. */
const ALLOWED = new Set(Array.from("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;=:@[]%", (char) => char.charCodeAt(0)));
const REPLACEMENT_BYTE = "_".charCodeAt(0);

interface StringRange {
  huffman: boolean;
  start: number;
  end: number;
}

/** Reads an HPACK integer with an N-bit prefix (RFC 7541, section 5.1). */
function readInteger(block: Uint8Array, offset: number, prefixBits: number): { value: number; next: number } {
  const mask = (1 << prefixBits) - 1;
  let value = block[offset]! & mask;
  let next = offset + 1;
  if (value < mask) return { value, next };

  for (let shift = 0; ; shift += 7) {
    if (next >= block.length || shift > 28) throw new RangeError("HPACK integer runs past the block");
    const byte = block[next++]!;
    value += (byte & 0x7f) * 2 ** shift;
    if ((byte & 0x80) === 0) return { value, next };
  }
}

/** Reads an HPACK string literal's position (RFC 7541, section 5.2). */
function readString(block: Uint8Array, offset: number): StringRange {
  if (offset >= block.length) throw new RangeError("HPACK string runs past the block");
  const huffman = (block[offset]! & 0x80) !== 0;
  const length = readInteger(block, offset, 7);
  const end = length.next + length.value;
  if (end > block.length) throw new RangeError("HPACK string runs past the block");
  return { huffman, start: length.next, end };
}

function decodeString(block: Uint8Array, range: StringRange): string {
  if (!range.huffman) return Buffer.from(block.subarray(range.start, range.end)).toString("latin1");
  return String.fromCharCode(...huffmanSymbols(block, range).map((symbol) => symbol.byte));
}

/** Replaces each byte an authority may not contain; returns whether any changed. */
function rewriteValue(block: Uint8Array, range: StringRange): boolean {
  let changed = false;

  if (!range.huffman) {
    for (let index = range.start; index < range.end; index++) {
      if (ALLOWED.has(block[index]!)) continue;
      block[index] = REPLACEMENT_BYTE;
      changed = true;
    }
    return changed;
  }

  for (const symbol of huffmanSymbols(block, range)) {
    if (ALLOWED.has(symbol.byte)) continue;
    const replacement = REPLACEMENT_BY_LENGTH.get(HUFFMAN_LENGTHS[symbol.byte]!);
    if (replacement === undefined) continue;
    writeBits(block, symbol.bit, HUFFMAN_CODES[replacement]!, HUFFMAN_LENGTHS[replacement]!);
    changed = true;
  }
  return changed;
}

/** Decodes a Huffman string into its symbols and the bit where each starts. */
function huffmanSymbols(block: Uint8Array, range: StringRange): Array<{ byte: number; bit: number }> {
  const symbols: Array<{ byte: number; bit: number }> = [];
  const endBit = range.end * 8;
  let bit = range.start * 8;

  while (bit < endBit) {
    let code = 0;
    let length = 0;
    let byte: number | undefined;

    while (byte === undefined && bit + length < endBit && length < 30) {
      code = code * 2 + ((block[(bit + length) >> 3]! >> (7 - ((bit + length) & 7))) & 1);
      length += 1;
      byte = DECODE.get(length * 2 ** 30 + code);
    }
    // What is left is the padding of up to seven 1 bits (the start of EOS).
    if (byte === undefined) break;

    symbols.push({ byte, bit });
    bit += length;
  }
  return symbols;
}

function writeBits(block: Uint8Array, startBit: number, code: number, length: number): void {
  for (let index = 0; index < length; index++) {
    const bit = Math.floor(code / 2 ** (length - 1 - index)) & 1;
    const position = startBit + index;
    const mask = 1 << (7 - (position & 7));
    block[position >> 3] = bit ? block[position >> 3]! | mask : block[position >> 3]! & ~mask;
  }
}

/** Symbol by (code length, code), keyed as `length * 2^30 + code`. */
const DECODE = new Map(HUFFMAN_CODES.map((code, byte) => [HUFFMAN_LENGTHS[byte]! * 2 ** 30 + code, byte]));

/** For each code length, an allowed character with a code that long; `_` where it fits. */
const REPLACEMENT_BY_LENGTH = (() => {
  const map = new Map<number, number>([[HUFFMAN_LENGTHS[REPLACEMENT_BYTE]!, REPLACEMENT_BYTE]]);
  for (const byte of ALLOWED) {
    const length = HUFFMAN_LENGTHS[byte]!;
    if (!map.has(length)) map.set(length, byte);
  }
  return map;
})();
