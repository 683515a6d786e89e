// streamseg browser demo: camera -> server over WebRTC -> overlay video back.
// Prompts name the seq of the frame on screen, so the server applies them on it.
import { SeqMap } from "./seqmap.js";
import { readBarcode } from "./barcode.js";
import { AuthError, authFetch, token } from "./auth.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const PROBE = params.has("probe"); // tests and `bench browser`: pixel access + barcode RTT

const state = {
  pc: null,
  dc: null,
  local: null,
  wantConnected: false,
  retryMs: 1000,
  seqmap: new SeqMap(),
  lastMeta: null,
  shownMeta: null,
  objects: new Map(),
  selected: null,
  palette: [[255, 64, 64]],
  pending: new Map(),
  requestId: 0,
  framesShown: 0,
  fpsReceived: 0,
  modelSteps: 0, // model results seen in the metadata (distinct infer_end)
  stepEnds: [], // infer_end of the last few model steps (server clock, seconds)
  rtt: [],
  shownIndex: null,
  localSeen: new Map(),
  drag: null,
};

const probe = document.createElement("canvas");
const probeCtx = probe.getContext("2d", { willReadFrequently: true });
const localProbe = document.createElement("canvas");
const localCtx = localProbe.getContext("2d", { willReadFrequently: true });

function setStatus(text, kind = "idle") {
  const el = $("status");
  el.textContent = text;
  el.className = `status ${kind}`;
}

function showMessage(text) {
  const el = $("message");
  el.textContent = text || "";
  el.hidden = !text;
}

async function loadInfo() {
  if (!token()) {
    showMessage(
      "No access token: open the URL `streamseg serve` printed (it ends in #token=…).",
    );
  }
  try {
    const info = await (await authFetch("/v1/info")).json();
    state.palette = info.palette || state.palette;
    $("hud-model").textContent = `${info.model} · ${info.backend} · ${info.device}`;
  } catch (err) {
    showMessage(
      err instanceof TypeError
        ? "The streamseg server is unreachable. Is `streamseg serve` running?"
        : err.message,
    );
  }
}

async function listCameras() {
  const select = $("camera");
  const devices = (await navigator.mediaDevices.enumerateDevices()).filter(
    (d) => d.kind === "videoinput",
  );
  const previous = select.value;
  select.replaceChildren(
    ...devices.map((d, i) => new Option(d.label || `camera ${i + 1}`, d.deviceId)),
  );
  if (previous) select.value = previous;
}

function colourOf(id) {
  const [r, g, b] = state.palette[id % state.palette.length];
  return `rgb(${r}, ${g}, ${b})`;
}

function renderObjects() {
  const list = $("objects");
  list.replaceChildren(
    ...[...state.objects.keys()].sort((a, b) => a - b).map((id) => {
      const li = document.createElement("li");
      li.dataset.trackId = id;
      li.className = id === state.selected ? "selected" : "";
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = colourOf(id);
      const label = document.createElement("span");
      label.textContent = `object ${id}`;
      const remove = document.createElement("button");
      remove.textContent = "×";
      remove.title = "remove";
      remove.onclick = (e) => {
        e.stopPropagation();
        removeObject(id);
      };
      li.append(swatch, label, remove);
      li.onclick = () => {
        state.selected = id;
        renderObjects();
      };
      return li;
    }),
  );
}

function send(message) {
  if (!state.dc || state.dc.readyState !== "open") {
    return Promise.reject(new Error("not connected"));
  }
  const request_id = `b${++state.requestId}`;
  state.dc.send(JSON.stringify({ ...message, request_id }));
  return new Promise((resolve, reject) => {
    state.pending.set(request_id, { resolve, reject });
    setTimeout(() => {
      if (state.pending.delete(request_id)) reject(new Error("no reply from server"));
    }, 30000);
  });
}

function onMessage(event) {
  const body = JSON.parse(event.data);
  if (body.type === "frame") {
    state.lastMeta = body;
    state.seqmap.addMetadata(body);
    countModelStep(body.times);
    return;
  }
  const waiter = state.pending.get(body.request_id);
  if (waiter) {
    state.pending.delete(body.request_id);
    body.type === "ack" ? waiter.resolve(body.result) : waiter.reject(new Error(body.message));
  } else if (body.type === "error") {
    showMessage(`server: ${body.message}`);
  }
}

// Between model steps every frame carries the newest step's inference times, so one
// step is one distinct infer_end (this works with no object tracked, where there is no
// model_seq to count). Before the first result infer_start equals infer_end.
function countModelStep(times) {
  const ends = state.stepEnds;
  if (times.infer_end > times.infer_start && times.infer_end !== ends[ends.length - 1]) {
    ends.push(times.infer_end);
    if (ends.length > 8) ends.shift();
    state.modelSteps++;
  }
}

// Model steps per second over the last few steps, from their server times: a model at
// 0.3 steps/s would read 0 or 1 in a per-second count.
function modelFps() {
  const ends = state.stepEnds;
  if (ends.length < 2) return null;
  return (ends.length - 1) / (ends[ends.length - 1] - ends[0]);
}

// How old the newest frame's masks are: 0 when the model ran on that very frame.
function maskAge(meta) {
  if (!meta || !meta.tracks.length) return null;
  return Math.max(...meta.tracks.map((t) => t.age_ms || 0));
}

async function prompt(message) {
  try {
    const frameSeq = (state.shownMeta || state.lastMeta)?.seq;
    const result = await send({ type: "prompt", frame_seq: frameSeq, ...message });
    state.objects.set(result.track_id, { exact: result.exact });
    state.selected = result.track_id;
    renderObjects();
    showMessage("");
    return result;
  } catch (err) {
    showMessage(err.message);
    return null;
  }
}

async function removeObject(id) {
  try {
    await send({ type: "remove", track_id: id });
  } catch (err) {
    showMessage(err.message);
  }
  state.objects.delete(id);
  if (state.selected === id) state.selected = null;
  renderObjects();
}

async function clearAll() {
  try {
    await send({ type: "reset" });
  } catch (err) {
    showMessage(err.message);
  }
  state.objects.clear();
  state.selected = null;
  renderObjects();
}

function toVideoCoords(event) {
  const video = $("remote");
  const rect = $("ui").getBoundingClientRect();
  const vw = video.videoWidth;
  const vh = video.videoHeight;
  if (!vw || !vh) return null;
  const scale = Math.min(rect.width / vw, rect.height / vh);
  const x = (event.clientX - rect.left - (rect.width - vw * scale) / 2) / scale;
  const y = (event.clientY - rect.top - (rect.height - vh * scale) / 2) / scale;
  if (x < 0 || y < 0 || x > vw || y > vh) return null;
  return [Math.round(x * 10) / 10, Math.round(y * 10) / 10];
}

function drawDrag(current) {
  const canvas = $("ui");
  const rect = canvas.getBoundingClientRect();
  canvas.width = rect.width;
  canvas.height = rect.height;
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  if (!state.drag || !current) return;
  ctx.strokeStyle = "#fff";
  ctx.setLineDash([6, 4]);
  const { sx, sy } = state.drag;
  ctx.strokeRect(sx - rect.left, sy - rect.top, current.clientX - sx, current.clientY - sy);
}

function setupPointer() {
  const canvas = $("ui");
  canvas.addEventListener("pointerdown", (e) => {
    state.drag = { sx: e.clientX, sy: e.clientY, start: toVideoCoords(e), shift: e.shiftKey };
    canvas.setPointerCapture(e.pointerId);
  });
  canvas.addEventListener("pointermove", (e) => state.drag && drawDrag(e));
  canvas.addEventListener("pointerup", async (e) => {
    const drag = state.drag;
    state.drag = null;
    drawDrag(null);
    const end = toVideoCoords(e);
    if (!drag || !drag.start || !end) return;
    const moved = Math.hypot(e.clientX - drag.sx, e.clientY - drag.sy);
    if (moved > 6) {
      const box = [
        Math.min(drag.start[0], end[0]), Math.min(drag.start[1], end[1]),
        Math.max(drag.start[0], end[0]), Math.max(drag.start[1], end[1]),
      ];
      await prompt({ box });
    } else if (drag.shift && state.selected !== null) {
      await prompt({
        track_id: state.selected, points: [end], labels: [0], clear_old_points: false,
      });
    } else {
      await prompt({ points: [end], labels: [1] });
    }
  });
}

function onRemoteFrame(now, metadata) {
  const video = $("remote");
  state.framesShown++;
  // null when this frame's metadata has not arrived (yet): never pair pixels with
  // another frame's metadata. Prompts fall back to the newest metadata.
  state.shownMeta = state.seqmap.lookup(metadata.rtpTimestamp);
  if (PROBE) {
    probe.width = video.videoWidth;
    probe.height = video.videoHeight;
    probeCtx.drawImage(video, 0, 0);
    const index = readBarcode(probeCtx, probe.width);
    state.shownIndex = index;
    const sentAt = index === null ? undefined : state.localSeen.get(index);
    if (sentAt !== undefined) {
      state.rtt.push(now - sentAt);
      if (state.rtt.length > 600) state.rtt.shift();
    }
  }
  video.requestVideoFrameCallback(onRemoteFrame);
}

function onLocalFrame(now) {
  const video = $("local");
  localProbe.width = video.videoWidth;
  localProbe.height = video.videoHeight;
  localCtx.drawImage(video, 0, 0);
  const index = readBarcode(localCtx, localProbe.width);
  const seenAt = index === null ? undefined : state.localSeen.get(index);
  if (index !== null && (seenAt === undefined || now - seenAt > 2500)) {
    state.localSeen.delete(index);
    state.localSeen.set(index, now);
    if (state.localSeen.size > 1000) state.localSeen.delete(state.localSeen.keys().next().value);
  }
  video.requestVideoFrameCallback(onLocalFrame);
}

async function waitForIce(pc) {
  if (pc.iceGatheringState === "complete") return;
  await new Promise((resolve) => {
    const done = () => pc.iceGatheringState === "complete" && resolve();
    pc.addEventListener("icegatheringstatechange", done);
    setTimeout(resolve, 3000);
  });
}

async function connect() {
  state.wantConnected = true;
  showMessage("");
  setStatus("connecting…");
  $("connect").disabled = true;
  try {
    if (!state.local) {
      const deviceId = $("camera").value;
      state.local = await navigator.mediaDevices.getUserMedia({
        video: deviceId ? { deviceId: { exact: deviceId }, width: 640, height: 480 }
          : { width: 640, height: 480 },
        audio: false,
      });
      await listCameras();
      $("local").srcObject = state.local;
      if (PROBE) $("local").requestVideoFrameCallback(onLocalFrame);
    }
  } catch (err) {
    state.wantConnected = false;
    $("connect").disabled = false;
    setStatus("no camera", "error");
    showMessage(`Camera unavailable (${err.name}). Allow camera access and try again.`);
    return;
  }
  const pc = new RTCPeerConnection({ iceServers: [] });
  state.pc = pc;
  for (const track of state.local.getVideoTracks()) {
    const sender = pc.addTrack(track, state.local);
    // Segmentation needs pixels more than frame rate: under load, drop frames first.
    const parameters = sender.getParameters();
    parameters.degradationPreference = "maintain-resolution";
    sender.setParameters(parameters).catch(() => {});
  }
  state.dc = pc.createDataChannel("streamseg");
  state.dc.onmessage = onMessage;
  pc.ontrack = (e) => {
    const video = $("remote");
    video.srcObject = e.streams[0] || new MediaStream([e.track]);
    video.requestVideoFrameCallback(onRemoteFrame);
  };
  pc.onconnectionstatechange = () => {
    const s = pc.connectionState;
    if (s === "connected") {
      setStatus("live", "live");
      state.retryMs = 1000;
    } else if ((s === "failed" || s === "disconnected") && state.pc === pc) {
      setStatus("connection lost", "error");
      scheduleReconnect("The connection to the server dropped; reconnecting…");
    }
  };
  try {
    await pc.setLocalDescription(await pc.createOffer());
    await waitForIce(pc);
    const response = await authFetch("/v1/webrtc/offer", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({
        sdp: pc.localDescription.sdp,
        type: "offer",
        options: {
          overlay: $("overlay").checked,
          masks_in_metadata: params.has("masks"),
          rate: $("rate").value,
        },
      }),
    });
    if (!response.ok) {
      const detail = (await response.json().catch(() => ({}))).detail;
      // Every refusal is {"detail": {"code", "message"}} (docs/PROTOCOL.md).
      throw new Error(detail?.message || `server answered ${response.status}`);
    }
    const answer = await response.json();
    await pc.setRemoteDescription({ sdp: answer.sdp, type: "answer" });
    $("disconnect").disabled = false;
  } catch (err) {
    pc.close();
    if (err instanceof AuthError) {
      disconnect();
      setStatus("no access", "error");
      showMessage(err.message);
      return;
    }
    setStatus("unreachable", "error");
    scheduleReconnect(`Cannot reach the server: ${err.message}. Retrying…`);
  }
}

function scheduleReconnect(message) {
  showMessage(message);
  if (state.pc) state.pc.close();
  state.pc = null;
  state.dc = null;
  state.objects.clear();
  renderObjects();
  if (!state.wantConnected) return;
  const delay = state.retryMs;
  state.retryMs = Math.min(state.retryMs * 2, 15000);
  setTimeout(() => state.wantConnected && connect(), delay);
}

function disconnect() {
  state.wantConnected = false;
  if (state.pc) state.pc.close();
  state.pc = null;
  state.dc = null;
  if (state.local) state.local.getTracks().forEach((t) => t.stop());
  state.local = null;
  state.objects.clear();
  renderObjects();
  $("remote").srcObject = null;
  $("local").srcObject = null;
  $("connect").disabled = false;
  $("disconnect").disabled = true;
  setStatus("disconnected");
}

function median(values) {
  if (!values.length) return null;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

let lastShown = 0;
async function updateHud() {
  state.fpsReceived = state.framesShown - lastShown;
  lastShown = state.framesShown;
  $("hud-recv").textContent = state.fpsReceived;
  const meta = state.lastMeta;
  const fps = modelFps();
  if (fps !== null) $("hud-model-fps").textContent = fps.toFixed(fps < 10 ? 1 : 0);
  const age = maskAge(meta);
  $("hud-age").textContent = age === null ? "–" : `${age.toFixed(0)} ms`;
  if (state.pc) {
    const stats = await state.pc.getStats();
    let networkRtt = null;
    stats.forEach((s) => {
      if (s.type === "outbound-rtp" && s.kind === "video" && s.framesPerSecond !== undefined) {
        $("hud-sent").textContent = Math.round(s.framesPerSecond);
      }
      if (s.type === "candidate-pair" && s.nominated && s.currentRoundTripTime !== undefined) {
        networkRtt = s.currentRoundTripTime * 1000;
      }
    });
    const rtt = median(state.rtt.slice(-60));
    if (rtt !== null) {
      $("hud-rtt").textContent = `${rtt.toFixed(0)} ms (measured)`;
    } else if (meta && networkRtt !== null) {
      const server = (meta.times.sent_ts - meta.times.recv_ts) * 1000;
      $("hud-rtt").textContent = `≈${(server + networkRtt).toFixed(0)} ms (server + network)`;
    }
  }
  if (meta) {
    $("hud-server").textContent =
      `${((meta.times.sent_ts - meta.times.recv_ts) * 1000).toFixed(0)} ms`;
    $("hud-stages").textContent = Object.entries(meta.stages_ms || {})
      .map(([k, v]) => `${k} ${v.toFixed(0)}`).join(" · ");
    $("hud-dropped").textContent = meta.dropped_frames;
  }
}

function onKey(e) {
  if (e.target.tagName === "SELECT" || e.target.tagName === "INPUT") return;
  if (e.key === "c" || e.key === "C") state.pc ? disconnect() : connect();
  else if (e.key === "x" || e.key === "X") clearAll();
  else if ((e.key === "Delete" || e.key === "Backspace") && state.selected !== null) {
    removeObject(state.selected);
  }
}

const PATCH = 3; // mean colour of a 7x7 patch: robust to compression noise

function patchMean(x, y) {
  const x0 = Math.max(0, x - PATCH);
  const y0 = Math.max(0, y - PATCH);
  const data = probeCtx.getImageData(x0, y0, 2 * PATCH + 1, 2 * PATCH + 1).data;
  const sum = [0, 0, 0];
  for (let i = 0; i < data.length; i += 4) {
    sum[0] += data[i];
    sum[1] += data[i + 1];
    sum[2] += data[i + 2];
  }
  const n = data.length / 4;
  return sum.map((v) => v / n);
}

// For tests and the browser benchmark: read-only views of what the page sees.
window.streamseg = {
  get connected() { return state.pc?.connectionState === "connected"; },
  get lastMeta() { return state.lastMeta; },
  get shownMeta() { return state.shownMeta; },
  get objects() { return [...state.objects.keys()]; },
  get framesShown() { return state.framesShown; },
  get modelSteps() { return state.modelSteps; },
  get rttSamples() { return [...state.rtt]; },
  // One consistent view of the frame on screen: its metadata, barcode and pixels.
  // `fractions`: [[fx, fy], ...] in 0..1 of the frame's width and height.
  snapshot(fractions) {
    const [w, h] = [probe.width, probe.height];
    const points = fractions.map(([fx, fy]) => [Math.floor(fx * w), Math.floor(fy * h)]);
    return {
      meta: state.shownMeta,
      index: state.shownIndex,
      size: [w, h],
      points,
      pixels: points.map(([x, y]) => patchMean(x, y)),
    };
  },
};

$("connect").onclick = connect;
$("disconnect").onclick = disconnect;
$("clear").onclick = clearAll;
document.addEventListener("keydown", onKey);
setupPointer();
setInterval(updateHud, 1000);
loadInfo();
navigator.mediaDevices?.enumerateDevices && listCameras().catch(() => {});
