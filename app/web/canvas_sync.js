// The Annotate canvas, part 4: talking to the server.
//
// A request: props.value = {op, nonce, ...} and trigger(op); Python's handler for the custom
// event `op` reads that value and answers with the canvas's new state (echoing the nonce), which
// arrives through watch("value"). Requests are sent one at a time, in order, so edits apply in
// the order they were made; one that changes the canvas waits for its answer (busy shows), one
// that only feeds the inspector does not.

const busyEl = element.querySelector(".mfs-busy");
const emptyEl = element.querySelector(".mfs-empty");
let chain = Promise.resolve();
let inflight = null;
let busyTimer = 0;
const ANSWER_MS = 30000;

function setBusy(d) {
  S.busy = Math.max(0, S.busy + d);
  clearTimeout(busyTimer);
  if (S.busy) busyTimer = setTimeout(() => { busyEl.hidden = false; }, 120);
  else busyEl.hidden = true;
  root.classList.toggle("busy", S.busy > 0);
}

function send(op, payload = {}, wait = true) {
  chain = chain.then(() => new Promise((resolve) => {
    S.nonce += 1;
    const nonce = S.nonce;
    props.value = { op, nonce, selected: S.selected, ...payload };
    if (!wait) { trigger(op); resolve(); return; }
    setBusy(+1);
    const timer = setTimeout(() => {
      if (inflight && inflight.nonce === nonce) { inflight = null; setBusy(-1); say("The server did not answer; try again."); resolve(); }
    }, ANSWER_MS);
    inflight = { nonce, resolve, timer, op, t0: performance.now() };
    trigger(op);
  }));
}

const timings = [];  // the last requests: [op, ms to the answer, ms to drawn] (bench, tests)
function answered(nonce, received) {
  if (!inflight || nonce == null || inflight.nonce !== nonce) return;
  const now = performance.now();
  timings.push([inflight.op, Math.round((received || now) - inflight.t0), Math.round(now - inflight.t0)]);
  if (timings.length > 50) timings.shift();
  clearTimeout(inflight.timer);
  const done = inflight.resolve;
  inflight = null;
  setBusy(-1);
  done();
}

let resending = false;
function resend() {
  // The answer refers to pictures this page does not hold (a reload of the component, or two
  // answers merged into one render): ask for everything again, once.
  if (resending) return;
  resending = true;
  send("resend", {}, true);
}

function clearImage() {
  S.img = null; S.idx = null; S.imageId = null; S.segs = []; S.byId = new Map(); S.ids = [];
  S.selected = null; S.hover = null; S.selBox = S.hovBox = null; S.vw = S.vh = 0;
  emptyEl.hidden = false;
}

// A threshold slider moved: the merge is on its way (its answer carries no nonce).
let sliderWait = false;
function onSlider(e) {
  const t = e.target;
  if (t.type !== "range" || !t.closest("#score-threshold, #overlap-threshold")) return;
  if (!sliderWait && S.img) {
    sliderWait = true; setBusy(+1);
    setTimeout(() => { if (sliderWait) { sliderWait = false; setBusy(-1); } }, ANSWER_MS);
  }
}
if (window.__mfsSlider) document.removeEventListener("input", window.__mfsSlider, true);
window.__mfsSlider = onSlider;
document.addEventListener("input", onSlider, true);

async function apply(v, received) {
  S.data = v;
  if (v.nonce == null && sliderWait) { sliderWait = false; setBusy(-1); }
  if (v.image_id == null) {
    clearImage();
  } else {
    const img = await asset(v.image);
    const newOverlay = v.overlay.key !== S.ovKey;
    const ov = newOverlay ? await asset(v.overlay) : null;
    if (!img || (newOverlay && !ov)) { answered(v.nonce); resend(); return; }
    resending = false;
    const newImage = v.image_id !== S.imageId;
    if (newImage) {
      S.imageId = v.image_id; S.selected = null; S.poly = []; S.mergeFrom = null; S.probe = null;
      S.fitted = true; S.ovKey = null;
    }
    S.img = img; S.imgKey = v.image.key;
    [S.vw, S.vh] = v.view; [S.W, S.H] = v.size;
    S.segs = v.segments; S.byId = new Map(v.segments.map((s) => [s.id, s])); S.classes = v.classes;
    if (ov) {
      S.idx = readIndex(ov, v.overlay.mode);
      S.boxes = indexBoxes(S.idx, S.vw, S.vh, v.overlay.ids.length);
      S.ovKey = v.overlay.key;
    }
    S.ids = v.overlay.ids;
    if (v.select !== "keep") S.selected = v.select;
    if (S.selected != null && !S.byId.has(S.selected)) S.selected = null;
    if (v.cls != null) S.cls = v.cls;
    if (S.cls == null || !S.classes.some((c) => c.id === S.cls)) S.cls = S.classes.length ? S.classes[0].id : null;
    S.hover = null;
    emptyEl.hidden = true;
    paintBase(); refreshSelection(); refreshHover();
    if (newImage) fit(false);
  }
  cv.dataset.selected = S.selected == null ? "" : String(S.selected);
  cv.dataset.image = S.imageId == null ? "" : String(S.imageId);
  cv.dataset.segments = String(S.segs.length);
  element.querySelector('[data-act="undo"]').title = v.undo ? `Undo: ${v.undo} (Ctrl+Z)` : "Nothing to undo";
  element.querySelector('[data-act="redo"]').title = v.redo ? `Redo: ${v.redo} (Ctrl+Y)` : "Nothing to redo";
  say(v.message || "");
  renderPanel();
  renderImageStatus(v);
  bump();
  paint();
  answered(v.nonce, received);
}

let applying = Promise.resolve();
function receive() {
  const v = props.value;
  if (!v || typeof v !== "object" || v.op !== undefined) return;  // our own request
  const received = performance.now();
  applying = applying.then(() => apply(v, received)).catch((err) => { console.error("annotator:", err); answered(v.nonce); });
}

watch("value", receive);
new ResizeObserver(() => resize()).observe(stage);
setTool("select");
window.mfs = { send, assets, setSelected, say, state: S, timings };
receive();
