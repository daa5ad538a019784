"""The inline CSS and JavaScript of the HTML rating sheet (no external resources).

The script reads its data from the page's ``<script type="application/json" id="sheet-data">``
block (``study_id``, ``rater_id``, ``columns``, ``questions``, ``pairs`` as
``[{"id", "prompt"}]`` in sheet order, ``download_name``), keeps the answers in
``localStorage`` under ``cascade-sheet:<study>:<rater>`` so that a reload loses nothing,
shows progress, and downloads the answers as the CSV of `cascade.eval.sheets.answer_csv`
(same columns, every field quoted, same formula neutralisation, UTF-8 with BOM, CRLF line ends).
"""

SHEET_CSS = """
:root { color-scheme: light; --accent: #1f5fbf; --done: #2e7d32; }
* { box-sizing: border-box; }
body {
  margin: 0; color: #1b1b1b; background: #f4f5f7;
  font: 16px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif;
}
header {
  position: sticky; top: 0; z-index: 1;
  background: #fff; border-bottom: 1px solid #d7dae0; padding: 0.6rem 1rem;
}
header h1 { font-size: 1.1rem; margin: 0 0 0.3rem; }
.toolbar { display: flex; flex-wrap: wrap; gap: 0.6rem; align-items: center; }
.toolbar progress { width: 14rem; height: 0.9rem; }
.toolbar button {
  font: inherit; padding: 0.35rem 0.9rem; border-radius: 0.4rem; cursor: pointer;
  border: 1px solid var(--accent); background: var(--accent); color: #fff;
}
.toolbar button.secondary { background: #fff; color: var(--accent); }
#status { color: #555; font-size: 0.9rem; }
main { max-width: 1120px; margin: 0 auto; padding: 1rem; }
.instructions { background: #fff; border: 1px solid #d7dae0; border-radius: 0.5rem; padding: 0 1rem; }
.pair {
  background: #fff; border: 1px solid #d7dae0; border-left: 6px solid #d7dae0;
  border-radius: 0.5rem; margin: 1rem 0; padding: 0.8rem 1rem; scroll-margin-top: 6rem;
}
.pair.done { border-left-color: var(--done); }
.pair h2 { font-size: 0.95rem; margin: 0; color: #555; font-weight: 600; }
.prompt { font-size: 1.15rem; margin: 0.4rem 0 0.8rem; white-space: pre-wrap; overflow-wrap: anywhere; }
.images { display: grid; grid-template-columns: 1fr 1fr; gap: 1rem; }
figure { margin: 0; text-align: center; }
figure img {
  width: min(100%, 512px, 62vh); aspect-ratio: 1 / 1; object-fit: contain;
  background: #eee; border-radius: 0.3rem;
}
figcaption { font-weight: 600; margin-top: 0.2rem; }
fieldset {
  border: 0; margin: 0.5rem 0 0; padding: 0;
  display: flex; flex-wrap: wrap; gap: 0.4rem 1.2rem; align-items: center;
}
legend { float: left; font-weight: 600; margin-right: 1rem; padding: 0; min-width: min(29rem, 100%); }
fieldset label { cursor: pointer; padding: 0.15rem 0.5rem; border-radius: 0.3rem; border: 1px solid #c9ccd3; }
fieldset label:has(input:checked) { background: #e3ecfb; border-color: var(--accent); }
"""

SHEET_JS = r"""
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("sheet-data").textContent);
  var CHOICES = ["left", "right", "indifferent"];
  var storageKey = "cascade-sheet:" + data.study_id + ":" + data.rater_id;
  var answers = loadAnswers();

  function loadAnswers() {
    var stored = {};
    try {
      stored = JSON.parse(window.localStorage.getItem(storageKey) || "{}") || {};
    } catch (error) {
      stored = {};
    }
    var clean = {};
    data.pairs.forEach(function (pair) {
      var saved = stored[pair.id] || {};
      clean[pair.id] = {};
      Object.keys(data.questions).forEach(function (question) {
        if (CHOICES.indexOf(saved[question]) >= 0) { clean[pair.id][question] = saved[question]; }
      });
    });
    return clean;
  }

  function saveAnswers() {
    try {
      window.localStorage.setItem(storageKey, JSON.stringify(answers));
    } catch (error) {
      setStatus("Answers cannot be kept in this browser's storage: download them before closing the page.");
    }
  }

  function isComplete(pairId) {
    return Object.keys(data.questions).every(function (question) { return Boolean(answers[pairId][question]); });
  }

  function completedCount() {
    return data.pairs.filter(function (pair) { return isComplete(pair.id); }).length;
  }

  function setStatus(text) {
    document.getElementById("status").textContent = text;
  }

  function showProgress() {
    var done = completedCount();
    var bar = document.getElementById("progress");
    bar.max = data.pairs.length;
    bar.value = done;
    document.getElementById("progress-text").textContent = done + " of " + data.pairs.length + " pairs answered";
    data.pairs.forEach(function (pair) {
      document.getElementById("pair-" + pair.id).classList.toggle("done", isComplete(pair.id));
    });
  }

  function restoreChoices() {
    data.pairs.forEach(function (pair) {
      Object.keys(answers[pair.id]).forEach(function (question) {
        var inputs = document.getElementsByName(pair.id + ":" + question);
        Array.prototype.forEach.call(inputs, function (input) {
          input.checked = input.value === answers[pair.id][question];
        });
      });
    });
  }

  function csvCell(value) {
    var text = String(value);
    if (/^[\0\t\r]/.test(text) || /^[\s\x00-\x1f\x7f-\x9f]*[=+\-@]/.test(text)) { text = "'" + text; }
    return '"' + text.replace(/"/g, '""') + '"';
  }

  function answersCsv() {
    var lines = [data.columns.map(csvCell).join(",")];
    data.pairs.forEach(function (pair, index) {
      var row = [data.study_id, data.rater_id, index + 1, pair.id, pair.prompt];
      Object.keys(data.questions).forEach(function (question) { row.push(answers[pair.id][question] || ""); });
      lines.push(row.map(csvCell).join(","));
    });
    return "\ufeff" + lines.join("\r\n") + "\r\n";
  }

  function download() {
    var blob = new Blob([answersCsv()], { type: "text/csv;charset=utf-8" });
    var url = URL.createObjectURL(blob);
    var link = document.createElement("a");
    link.href = url;
    link.download = data.download_name;
    document.body.appendChild(link);
    link.click();
    window.setTimeout(function () { URL.revokeObjectURL(url); link.remove(); }, 10000);
    var done = completedCount();
    setStatus("Downloaded " + data.download_name + " (" + done + " of " + data.pairs.length + " pairs answered" +
      (done < data.pairs.length ? "; finish the rest and download again" : "; please send this file back") + ").");
  }

  function nextUnanswered() {
    var pair = data.pairs.find(function (candidate) { return !isComplete(candidate.id); });
    if (pair) {
      document.getElementById("pair-" + pair.id).scrollIntoView({ block: "start" });
    } else {
      setStatus("Every pair is answered: download your answers.");
    }
  }

  document.addEventListener("change", function (event) {
    var input = event.target;
    if (!input.dataset || !input.dataset.pair) { return; }
    answers[input.dataset.pair][input.dataset.question] = input.value;
    saveAnswers();
    showProgress();
  });
  document.getElementById("download").addEventListener("click", download);
  document.getElementById("next").addEventListener("click", nextUnanswered);
  restoreChoices();
  showProgress();
})();
"""
