// Matches a rendered video frame to the server's metadata for it.
// The server stamps each overlay frame with a 90 kHz pts and sends that pts in the
// metadata ("video_pts"); the RTP timestamp the browser reports is that pts plus a
// random origin chosen by the sender. The origin is found once, as the offset that
// agrees across several frames, then every frame maps exactly.

const MOD = 2 ** 32;

export class SeqMap {
  constructor(capacity = 600) {
    this.capacity = capacity;
    this.byPts = new Map();
    this.offset = null;
    this.votes = new Map();
  }

  addMetadata(meta) {
    this.byPts.set(meta.video_pts % MOD, meta);
    if (this.byPts.size > this.capacity) {
      this.byPts.delete(this.byPts.keys().next().value);
    }
  }

  lookup(rtpTimestamp) {
    if (rtpTimestamp === undefined) return null;
    if (this.offset !== null) {
      const hit = this.byPts.get((rtpTimestamp - this.offset + MOD) % MOD);
      if (hit) return hit;
    }
    for (const pts of this.byPts.keys()) {
      const offset = (rtpTimestamp - pts + MOD) % MOD;
      const votes = (this.votes.get(offset) || 0) + 1;
      this.votes.set(offset, votes);
      if (votes >= 3) {
        this.offset = offset;
        this.votes.clear();
        return this.byPts.get((rtpTimestamp - offset + MOD) % MOD) || null;
      }
    }
    if (this.votes.size > 50000) this.votes.clear();
    return null;
  }
}
