"""The review page: one HTML file with its CSS and JavaScript inline, and the sample as JSON inside it, so it
needs nothing from outside the machine (no CDN, no web font, no request but to the folder or the server it
came from). The same page serves both ways (docs/REVIEW.md):

- served (`mode: server`): each verdict is POSTed to `api/verdict` as it is given, in order, one at a time;
  the page shows "saving" until the server has written both files, and an error (and takes the mark back)
  when it cannot;
- --no-serve's index.html (`mode: file`, opened from file://): marks are kept in the browser's localStorage
  under the sample's key, and two buttons download verdicts.csv and verdicts.selections.txt, built from the
  same cells the server writes.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os

from convnet_cli.review.verdicts import CSV_HEADER, TABLE_HEADER

CSS = """
*{box-sizing:border-box}
body{margin:0;background:#16181b;color:#e6e6e6;font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif}
header{display:flex;flex-wrap:wrap;align-items:center;gap:.6em 1.4em;padding:.6em 1.2em;background:#202328;
 border-bottom:1px solid #33373d}
h1{font-size:1.05em;margin:0;font-weight:600;color:#fff}
#progress{font-variant-numeric:tabular-nums}
#bar{flex:1 1 160px;max-width:320px;height:8px;background:#33373d;border-radius:4px;overflow:hidden}
#bar>div{height:100%;background:#4fb286;width:0}
#classes{display:flex;flex-wrap:wrap;gap:.4em}
.chip{padding:.05em .55em;border-radius:1em;background:#2c3036;font-size:.85em;font-variant-numeric:tabular-nums}
.chip.done{background:#2f5242}
main{padding:1em 1.2em;max-width:980px}
#head{display:flex;flex-wrap:wrap;align-items:baseline;gap:.4em 1.2em;margin-bottom:.5em}
#pos{color:#9aa0a6;font-variant-numeric:tabular-nums}
#cls{font-size:1.35em;font-weight:600;color:#fff}
#score{font-variant-numeric:tabular-nums}
.badge{padding:.1em .6em;border-radius:.3em;font-weight:600;font-size:.9em}
.v-true{background:#2e7d4f;color:#fff}.v-false{background:#b23b3b;color:#fff}.v-unsure{background:#a77b1d;color:#fff}
.v-none{background:#33373d;color:#aab}
#figwrap{display:flex;gap:.3em}
#fticks{position:relative;width:4.6em;white-space:nowrap;font-size:.75em;color:#9aa0a6;text-align:right}
#fticks span{position:absolute;right:.2em;transform:translateY(-50%)}
#figure{position:relative;flex:1;line-height:0;background:#000;border:1px solid #33373d}
#spec{width:100%;height:auto;display:block;image-rendering:auto}
#playhead{position:absolute;top:0;bottom:0;width:2px;background:#ff5a5a;left:0;display:none}
#tticks{position:relative;height:1.4em;margin-left:4.9em;font-size:.75em;color:#9aa0a6}
#tticks span{position:absolute;transform:translateX(-50%);white-space:nowrap}
#audiorow{display:flex;flex-wrap:wrap;align-items:center;gap:.5em 1em;margin:.6em 0}
audio{width:min(100%,520px)}
#slowed{color:#ffcf6a}
#meta{color:#c8c8c8;word-break:break-all}
#meta b{color:#fff;font-weight:600}
#notes{color:#9aa0a6;font-size:.9em}
#buttons{display:flex;flex-wrap:wrap;gap:.5em;margin:.9em 0 .4em}
button{font:inherit;padding:.5em 1em;border-radius:.35em;border:1px solid #454a52;background:#2a2e34;color:#eee;
 cursor:pointer}
button:hover{background:#343941}
button kbd{font:inherit;font-size:.8em;color:#aab;margin-left:.35em}
#b-true{border-color:#2e7d4f}#b-false{border-color:#b23b3b}#b-unsure{border-color:#a77b1d}
#status{min-height:1.5em;font-size:.9em;color:#9aa0a6}
#status[data-state=error]{color:#ff7b7b;font-weight:600}
#done{display:none;margin:.6em 0;padding:.5em .8em;background:#2f5242;border-radius:.35em}
#filemode{display:none;margin-top:1em;padding:.7em .9em;border:1px dashed #454a52;border-radius:.35em;font-size:.92em}
#help{margin-top:1em;font-size:.85em;color:#8a9096}
label{user-select:none}
"""

BODY = """
<header>
 <h1>convnet review</h1>
 <span id="progress"></span><div id="bar"><div></div></div>
 <div id="classes"></div>
</header>
<main>
 <div id="head"><span id="pos"></span><span id="cls"></span><span id="score"></span>
  <span id="verdict" class="badge v-none"></span></div>
 <div id="figwrap"><div id="fticks"></div>
  <div id="figure"><img id="spec" alt="spectrogram of the clip"><div id="playhead"></div></div></div>
 <div id="tticks"></div>
 <div id="audiorow"><audio id="audio" controls preload="auto"></audio><span id="slowed"></span>
  <label><input type="checkbox" id="autoplay"> play on open</label></div>
 <div id="meta"></div>
 <div id="notes"></div>
 <div id="buttons">
  <button id="b-prev" title="previous (left arrow)">&#9664; previous<kbd>&larr;</kbd></button>
  <button id="b-true" title="true (y)">true<kbd>y</kbd></button>
  <button id="b-false" title="false (n)">false<kbd>n</kbd></button>
  <button id="b-unsure" title="unsure (u)">unsure<kbd>u</kbd></button>
  <button id="b-play" title="play / pause (space)">play / pause<kbd>space</kbd></button>
  <button id="b-next" title="next (right arrow)">next &#9654;<kbd>&rarr;</kbd></button>
 </div>
 <div id="status" data-state="idle"></div>
 <div id="done">Every item of this sample is reviewed.</div>
 <div id="filemode">Opened as a file: marks are kept in this browser only (localStorage), not in the review
  folder. <button id="dl-csv">download verdicts.csv</button> <button id="dl-table">download
  verdicts.selections.txt</button><br>Put the downloaded verdicts.csv into the review folder and run
  <code>convnet review</code> on it again: it writes verdicts.selections.txt from it for make-batches.</div>
 <div id="help">Keys: <b>y</b> true, <b>n</b> false, <b>u</b> unsure (then on to the next item),
  <b>&rarr;</b>/<b>&larr;</b> next/previous, <b>space</b> play/pause. The spectrogram shows the event between the
  white lines, its context dimmed.</div>
</main>
"""

JS = r"""
(function () {
"use strict";
var D = JSON.parse(document.getElementById("review-data").textContent);
var items = D.items, FILE = D.mode === "file", KEY = "convnet-review:" + D.sample_key;
var verdicts = {}, saved = {}, queue = [], busy = false, failed = "", mediaErr = "";
Object.keys(D.verdicts).forEach(function (k) { verdicts[k] = D.verdicts[k]; saved[k] = D.verdicts[k]; });
function store(k, v) { try { if (v === undefined) return localStorage.getItem(k); localStorage.setItem(k, v); }
  catch (e) { return null; } }
if (FILE) {
  try { var local = JSON.parse(store(KEY) || "{}");
    Object.keys(local).forEach(function (k) { if (D.ids.indexOf(+k) >= 0) verdicts[k] = local[k]; }); } catch (e) {}
}
var $ = function (id) { return document.getElementById(id); };
var audio = $("audio"), cur = firstOpen();
$("autoplay").checked = store("convnet-review:autoplay") === "1";

function firstOpen() { for (var i = 0; i < items.length; i++) if (!verdicts[items[i].id]) return i;
  return Math.max(0, items.length - 1); }
function reviewed(list) { return list.filter(function (it) { return verdicts[it.id]; }).length; }
function fmt(x, d) { return (+x).toFixed(d); }
function niceStep(span, n) { var raw = span / n, p = Math.pow(10, Math.floor(Math.log10(raw)));
  var m = [1, 2, 5, 10].find(function (k) { return k * p >= raw; }); return m * p; }
function text(el, s) { $(el).textContent = s; }

function ticks(it) {
  var t = $("tticks"), f = $("fticks"); t.textContent = ""; f.textContent = "";
  var b = it.clip_begin, e = it.clip_end, step = niceStep(e - b, 7), dec = Math.max(0, -Math.floor(Math.log10(step)));
  for (var x = Math.ceil(b / step) * step; x <= e + 1e-9; x += step) {
    var s = document.createElement("span"); s.style.left = ((x - b) / (e - b) * 100) + "%";
    s.textContent = fmt(x, dec) + " s"; t.appendChild(s); }
  var nyq = it.nyquist, khz = nyq >= 2000;
  for (var k = 0; k <= 4; k++) { var hz = nyq * k / 4, s2 = document.createElement("span");
    s2.style.top = (100 - k * 25) + "%"; s2.style.transform = k === 0 ? "translateY(-100%)" : k === 4 ? "none" : "";
    s2.textContent = khz ? fmt(hz / 1000, hz % 1000 ? 1 : 0) + " kHz" : fmt(hz, 0) + " Hz"; f.appendChild(s2); }
}

function render() {
  if (!items.length) { text("pos", "no items"); return; }
  var it = items[cur], v = verdicts[it.id];
  text("pos", "item " + (cur + 1) + " of " + items.length);
  text("cls", it.label); text("score", "score " + it.score);
  var vb = $("verdict"); vb.className = "badge v-" + (v || "none"); vb.textContent = v ? v : "not reviewed";
  if ($("spec").getAttribute("src") !== it.image) $("spec").setAttribute("src", it.image);
  if (audio.getAttribute("src") !== it.listen) {
    audio.setAttribute("src", it.listen); audio.load(); $("playhead").style.display = "none"; mediaErr = "";
    if ($("autoplay").checked) audio.play().catch(function () {});
  }
  text("slowed", it.slowed > 1 ? "slowed " + it.slowed + "x (time expansion: " + fmt(it.nyquist / 1000, 0) +
       " kHz is heard as " + fmt(it.nyquist / it.slowed / 1000, 1) + " kHz)" : "");
  var m = $("meta"); m.textContent = "";
  var r = document.createElement("b"); r.textContent = it.recording; m.appendChild(r);
  m.appendChild(document.createTextNode("  " + it.begin + " \u2013 " + it.end + " s (" +
    fmt(it.end - it.begin, 3) + " s), clip " + fmt(it.clip_begin, 3) + " \u2013 " + fmt(it.clip_end, 3) + " s at " +
    it.sample_rate + " Hz"));
  var notes = [];
  if (it.at_start) notes.push("the clip starts at the recording's start (less context before)");
  if (it.at_end) notes.push("the clip ends at the recording's end (less context after)");
  if (it.truncated) notes.push("a long event: the clip holds its first " + fmt(it.clip_end - it.clip_begin, 1) + " s");
  text("notes", notes.join("; "));
  ticks(it);
  var n = reviewed(items); text("progress", n + " of " + items.length + " reviewed");
  $("bar").firstChild.style.width = (items.length ? n / items.length * 100 : 0) + "%";
  var c = $("classes"); c.textContent = "";
  D.classes.forEach(function (name) {
    var mine = items.filter(function (x) { return x.label === name; }), k = reviewed(mine);
    var s = document.createElement("span"); s.className = "chip" + (k === mine.length ? " done" : "");
    s.dataset.cls = name; s.textContent = name + " " + k + "/" + mine.length; c.appendChild(s); });
  $("done").style.display = n === items.length && items.length ? "block" : "none";
  status();
}

function status() {
  var s = $("status");
  var err = [failed, mediaErr].filter(Boolean).join("; ");
  if (err) { s.dataset.state = "error"; s.textContent = err; return; }
  if (FILE) { s.dataset.state = "saved"; s.textContent = "marks kept in this browser"; return; }
  if (queue.length || busy) { s.dataset.state = "saving"; s.textContent = "saving\u2026"; return; }
  s.dataset.state = Object.keys(saved).length ? "saved" : "idle";
  s.textContent = Object.keys(saved).length ? "saved to verdicts.csv and verdicts.selections.txt" : "";
}

function flush() {
  if (busy || !queue.length) { status(); return; }
  busy = true; status();
  var job = queue[0];
  fetch("api/verdict", {method: "POST", headers: {"Content-Type": "application/json"},
                        body: JSON.stringify({id: job.id, verdict: job.verdict})})
    .then(function (r) { return r.json().then(function (j) { if (!r.ok) throw new Error(j.error || r.status);
      return j; }); })
    .then(function () { queue.shift(); saved[job.id] = job.verdict; busy = false; flush(); })
    .catch(function (e) {
      busy = false;
      queue.splice(0).forEach(function (q) { if (saved[q.id]) verdicts[q.id] = saved[q.id]; else delete verdicts[q.id]; });
      failed = "not saved: " + (e && e.message ? e.message : e) +
               " (is convnet review still running? start it again and reload this page)";
      render(); });
}

function mark(v) {
  if (!items.length) return;
  var it = items[cur];
  verdicts[it.id] = v; failed = "";
  if (FILE) store(KEY, JSON.stringify(verdicts));
  else { queue.push({id: it.id, verdict: v}); flush(); }
  if (cur < items.length - 1) cur++;
  render();
}
function go(d) { var j = Math.min(items.length - 1, Math.max(0, cur + d)); if (j !== cur) { cur = j; render(); } }
function toggle() { if (audio.paused) audio.play().catch(function (e) { mediaErr = "cannot play: " + e.message; status(); });
  else audio.pause(); }

function cells(q) { return q.map(function (c) { c = String(c);
  return /[",\r\n]/.test(c) ? '"' + c.replace(/"/g, '""') + '"' : c; }).join(","); }
function csvText() { var out = [cells(D.csv_header)];
  items.forEach(function (it) { if (verdicts[it.id]) out.push(cells(it.csv.concat([verdicts[it.id]]))); });
  return out.join("\n") + "\n"; }
function tableText() { var out = [D.table_header.join("\t")];
  items.forEach(function (it) { if (verdicts[it.id]) out.push(it.table.concat([verdicts[it.id]]).join("\t")); });
  return out.join("\n") + "\n"; }
function download(name, body, type) {
  var a = document.createElement("a"); a.href = URL.createObjectURL(new Blob([body], {type: type}));
  a.download = name; document.body.appendChild(a); a.click();
  setTimeout(function () { URL.revokeObjectURL(a.href); a.remove(); }, 0); }

window.addEventListener("keydown", function (e) {
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  var k = e.key, act = {y: function () { mark("true"); }, n: function () { mark("false"); },
    u: function () { mark("unsure"); }, ArrowRight: function () { go(1); }, ArrowLeft: function () { go(-1); },
    " ": toggle, Spacebar: toggle}[k.length === 1 ? k.toLowerCase() : k];
  if (!act) return;
  e.preventDefault(); e.stopPropagation(); act();
}, true);
function button(id, fn) { var b = $(id); b.addEventListener("mousedown", function (e) { e.preventDefault(); });
  b.addEventListener("click", function (e) { e.preventDefault(); fn(); b.blur(); }); }
button("b-true", function () { mark("true"); }); button("b-false", function () { mark("false"); });
button("b-unsure", function () { mark("unsure"); }); button("b-prev", function () { go(-1); });
button("b-next", function () { go(1); }); button("b-play", toggle);
button("dl-csv", function () { download("verdicts.csv", csvText(), "text/csv"); });
button("dl-table", function () { download("verdicts.selections.txt", tableText(), "text/plain"); });
$("autoplay").addEventListener("change", function () { store("convnet-review:autoplay", this.checked ? "1" : "0");
  this.blur(); });
function head() { if (!audio.paused && audio.duration) {
    var p = $("playhead"); p.style.display = "block"; p.style.left = (audio.currentTime / audio.duration * 100) + "%"; }
  if (!audio.paused) requestAnimationFrame(head); }
audio.addEventListener("play", function () { requestAnimationFrame(head); });
audio.addEventListener("error", function () { mediaErr = "cannot play " + items[cur].listen + " (media error " +
  (audio.error ? audio.error.code : "?") + ")"; status(); });
if (FILE) $("filemode").style.display = "block";
window.convnetReview = {csvText: csvText, tableText: tableText, verdicts: verdicts,
  current: function () { return items[cur].id; }, pending: function () { return queue.length + (busy ? 1 : 0); }};
render();
})();
"""


def sample_key(review_dir: str) -> str:
    """The key a file-mode page keeps its marks under: the sample's review.csv, hashed."""
    with open(os.path.join(review_dir, "review.csv"), "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:16]


def page_data(review_dir: str, items, media: dict, verdicts: dict, classes, mode: str) -> dict:
    """What the page embeds. media: {id: media.json facts}."""
    from convnet_cli.review.verdicts import csv_text, table_text

    out = []
    for it in items:
        m = media.get(it.id, {})
        one = {it.id: "X"}
        csv_cells = csv_text([it], one).splitlines()[1]
        table_cells = table_text([it], one, {it.id: m.get("nyquist", 0.0)}).splitlines()[1].split("\t")[:-1]
        out.append({"id": it.id, "recording": it.recording, "begin": f"{it.begin:.3f}", "end": f"{it.end:.3f}",
                    "label": it.label, "score": f"{it.score:.4f}", "image": it.image, "listen": it.listen,
                    "clip": it.clip, "clip_begin": m.get("clip_begin", it.begin), "clip_end": m.get("clip_end", it.end),
                    "sample_rate": m.get("sample_rate", 0), "nyquist": m.get("nyquist", 0.0),
                    "slowed": m.get("slowed", 1), "at_start": bool(m.get("at_start")),
                    "at_end": bool(m.get("at_end")), "truncated": bool(m.get("truncated")),
                    "csv": next(csv.reader([csv_cells]))[:-1], "table": table_cells})
    return {"mode": mode, "sample_key": sample_key(review_dir), "items": out, "ids": [it.id for it in items],
            "verdicts": {str(k): v for k, v in verdicts.items()}, "classes": list(classes),
            "csv_header": list(CSV_HEADER), "table_header": list(TABLE_HEADER)}


def page_html(data: dict) -> str:
    # '<' as \u003c: the JSON can never close its <script> element, whatever a class or file name holds
    blob = json.dumps(data, ensure_ascii=False, separators=(",", ":")).replace("<", "\\u003c")
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            "<title>convnet review</title>\n<link rel=\"icon\" href=\"data:,\">\n"
            f"<style>{CSS}</style></head><body>{BODY}\n"
            f"<script type=\"application/json\" id=\"review-data\">{blob}</script>\n"
            f"<script>{JS}</script>\n</body></html>\n")
