// A robot client in another language, written against the published protocol only:
// `FrameHeader` is generated from docs/protocol/schemas/frame_header.json by
// json-schema-to-typescript, and the same schema validates the header at run time.
//
//   node out/check_frame.js <frame_header.json schema> <binary websocket message>
//
// Prints what it read as JSON; exits 1 on any mismatch (tests/e2e/test_ts_client.py).
import { readFileSync } from "node:fs";
import Ajv2020 from "ajv/dist/2020";
import type { FrameHeader } from "./frame_header";

type Box = [number, number, number, number];

function fail(why: string): never {
  console.error(`check_frame: ${why}`);
  process.exit(1);
}

const [schemaPath, messagePath] = process.argv.slice(2);
if (!schemaPath || !messagePath) fail("usage: check_frame <schema.json> <message.bin>");

const message = readFileSync(messagePath);
if (message.length < 4) fail(`message is ${message.length} bytes, shorter than its prefix`);
const headerLength = message.readUInt32BE(0);
const headerEnd = 4 + headerLength;
if (headerEnd > message.length) fail(`header length ${headerLength} exceeds the message`);
const raw: unknown = JSON.parse(message.subarray(4, headerEnd).toString("utf8"));
const payload = message.subarray(headerEnd);

const ajv = new Ajv2020({ allErrors: true, strict: false });
const validate = ajv.compile<FrameHeader>(JSON.parse(readFileSync(schemaPath, "utf8")));
if (!validate(raw)) fail(`schema refused the header: ${ajv.errorsText(validate.errors)}`);
const header: FrameHeader = raw;

// Typed reads: these lines only compile if the generated types say what they are.
const seq: number = header.seq;
const width: number = header.width;
const height: number = header.height;
const capturedAt: number = header.times.capture_ts;
const bboxes: (Box | null)[] = [];
const masks: { offset: number; length: number }[] = [];
for (const track of header.tracks) {
  const id: number = track.track_id;
  const bbox: Box | null = track.bbox;
  if (bbox !== null) {
    const [x0, y0, x1, y1] = bbox;
    if (!(0 <= x0 && x0 < x1 && x1 <= width && 0 <= y0 && y0 < y1 && y1 <= height)) {
      fail(`track ${id}: bbox ${JSON.stringify(bbox)} is not inside the ${width}x${height} frame`);
    }
  }
  bboxes.push(bbox);
  const where = track.mask;
  if (header.encoding == null) {
    if (where != null) fail(`track ${id} has a mask but the header names no encoding`);
    continue;
  }
  if (where == null) fail(`track ${id} has no mask although encoding is ${header.encoding}`);
  const offset: number = where.offset;
  const length: number = where.length;
  if (offset + length > payload.length) fail(`track ${id}: mask outside the payload`);
  masks.push({ offset, length });
}
console.log(
  JSON.stringify({
    seq,
    width,
    height,
    capture_ts: capturedAt,
    encoding: header.encoding ?? null,
    track_ids: header.tracks.map((t) => t.track_id),
    bboxes,
    masks,
    payload_bytes: payload.length,
  }),
);
