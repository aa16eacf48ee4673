// The Annotate canvas, part 3: the segment panel beside it (list, class picker, actions).
// The panel is a static gr.HTML (#segment-panel-root); the canvas fills it from its own state,
// so hovering a row highlights the region and hovering a region highlights the row.

function esc(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}

function panelRoot() { return document.getElementById("segment-panel-root"); }

function renderPanel() {
  const p = panelRoot();
  if (!p) return;
  if (!p.dataset.wired) wirePanel(p);
  const sel = S.selected == null ? null : S.byId.get(S.selected);
  const current = sel ? sel.cat : S.cls;
  const options = S.classes.map((c) =>
    `<option value="${c.id}"${c.id === current ? " selected" : ""}>${c.key ? c.key + " · " : ""}${esc(c.name)}</option>`).join("");
  const rows = S.segs.map((s) => {
    const on = s.id === S.selected ? " on" : "", hov = s.id === S.hover ? " hov" : "";
    return `<tr class="mfs-row${on}${hov}" data-id="${s.id}"><td><i style="background:${s.color}"></i></td>` +
      `<td>${s.id}</td><td>${esc(s.cls)}</td><td>${s.area}</td>` +
      `<td>${s.score == null ? "" : s.score.toFixed(2)}</td><td>${s.query == null ? "hand" : "q" + s.query}</td></tr>`;
  }).join("");
  const none = !sel ? " disabled" : "";
  const undo = S.data && S.data.undo ? `Undo: ${esc(S.data.undo)}` : "nothing to undo";
  p.innerHTML =
    `<div class="mfs-panel-head"><b>Segments (${S.segs.length})</b>` +
    `<span class="mfs-sel">${sel ? `selected ${sel.id}: ${esc(sel.cls)}` : "click the canvas to select"}</span></div>` +
    `<div class="mfs-classrow"><select class="mfs-classpick" title="Class of the selection (relabels it) or of the brush">${options}</select>` +
    `<input class="mfs-newclass" placeholder="new class, Enter" maxlength="100"></div>` +
    `<div class="mfs-actions">` +
    `<button data-a="delete"${none} title="Delete (Del)">Delete</button>` +
    `<button data-a="merge"${none} title="Merge into the segment clicked next (M)">Merge…</button>` +
    `<button data-a="split"${none} title="Split into connected parts">Split</button>` +
    `<button data-a="swap"${none || (sel && sel.query == null ? " disabled" : "")} title="Relabel to its query's 2nd most likely class">2nd class</button>` +
    `<button data-a="reset" title="Replace the annotation by the model's merge (undoable)">Reset</button></div>` +
    `<div class="mfs-table"><table><thead><tr><th></th><th>id</th><th>class</th><th>area</th><th>score</th><th>src</th></tr></thead>` +
    `<tbody>${rows}</tbody></table></div>` +
    `<div class="mfs-undo" title="Ctrl+Z">${undo}</div>`;
  const on = p.querySelector(".mfs-row.on"), box = p.querySelector(".mfs-table");
  if (on && box) {  // keep the selected row in view (inside the table only, never the page)
    const top = on.offsetTop - box.querySelector("thead").offsetHeight;
    if (top < box.scrollTop) box.scrollTop = top;
    else if (on.offsetTop + on.offsetHeight > box.scrollTop + box.clientHeight) box.scrollTop = on.offsetTop + on.offsetHeight - box.clientHeight;
  }
}

function panelHover(id) {
  const p = panelRoot();
  if (!p) return;
  p.querySelectorAll(".mfs-row.hov").forEach((r) => r.classList.remove("hov"));
  if (id != null) {
    const r = p.querySelector(`.mfs-row[data-id="${id}"]`);
    if (r) r.classList.add("hov");
  }
}

function wirePanel(p) {
  // Delegated listeners, once: the panel's inner HTML is replaced on every render.
  p.dataset.wired = "1";
  p.addEventListener("click", (e) => {
    const row = e.target.closest(".mfs-row");
    if (row) { setSelected(+row.dataset.id); return; }
    const b = e.target.closest("button[data-a]");
    if (!b) return;
    const a = b.dataset.a;
    if (a === "merge") {
      S.mergeFrom = S.selected; setTool("select");
      say(`Merge: click the segment that ${S.selected} should join (Esc cancels).`);
    } else if (a === "swap") send("swap_class", { segment: S.selected });
    else send(a, { segment: S.selected });
  });
  p.addEventListener("mouseover", (e) => {
    const row = e.target.closest(".mfs-row");
    const id = row ? +row.dataset.id : null;
    if (id !== S.hover) { S.hover = id; refreshHover(); draw(); panelHover(id); }
  });
  p.addEventListener("mouseleave", () => { S.hover = null; refreshHover(); draw(); panelHover(null); });
  p.addEventListener("change", (e) => {
    if (!e.target.classList.contains("mfs-classpick")) return;
    const cat = +e.target.value;
    if (S.selected != null) send("relabel", { segment: S.selected, cls: cat });
    else { S.cls = cat; say(`Class for new segments: ${className(cat)}.`); }
  });
  p.addEventListener("keydown", (e) => {
    if (!e.target.classList.contains("mfs-newclass") || e.key !== "Enter") return;
    const name = e.target.value.trim();
    if (!name) return;
    e.target.value = "";
    if (S.selected != null) send("relabel", { segment: S.selected, cls: name });
    else send("add_class", { cls: name });
  });
}

function renderImageStatus(v) {
  // The open image in one line, in the navigation row (a static gr.HTML this fills).
  const el = document.getElementById("image-status-root");
  if (!el) return;
  if (!v || v.image_id == null) { el.textContent = "No image open."; return; }
  const review = v.review ? ` · review: ${esc(v.review)}${v.reviewed ? ` (${esc(v.reviewed.replace("T", " ").slice(0, 16))})` : ""}` : "";
  el.innerHTML = `<b>${esc(v.name)}</b> ${v.size[0]}×${v.size[1]} · ${esc(v.position || "")} · ` +
    `<span class="mfs-status">${esc(v.status)}</span>${review}`;
  el.title = el.textContent;
}
