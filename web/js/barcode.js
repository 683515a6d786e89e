// Frame-index barcodes for measuring true round-trip latency with a test camera:
// 16 blocks along the top-left edge, each 1/40 of the frame width (so the code
// survives WebRTC rescaling), 10 bits of index then 6 check bits
// (streamseg/media/synthetic.py draws it).
export const BITS = 16;

export function readBarcode(ctx, width) {
  const block = width / 40;
  if (block < 4) return null;
  const row = ctx.getImageData(0, Math.floor(block / 2), Math.ceil(BITS * block), 1).data;
  let value = 0;
  for (let i = 0; i < BITS; i++) {
    const p = Math.floor(i * block + block / 2) * 4;
    const luma = 0.299 * row[p] + 0.587 * row[p + 1] + 0.114 * row[p + 2];
    value = (value << 1) | (luma > 127 ? 1 : 0);
  }
  const index = value >> 6;
  return (index * 37 + 11) % 64 === (value & 63) ? index : null;
}
