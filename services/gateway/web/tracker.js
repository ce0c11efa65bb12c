/* Tailor web tracker: no dependencies, served by the gateway at /tracker.js.
 *
 *   <script src="https://tailor.example.com/tracker.js"></script>
 *   <script>
 *     var tailor = Tailor.init({endpoint: "https://tailor.example.com", key: "tlr_<browser key>"});
 *     tailor.page();                                   // a page view
 *     tailor.productView("22423");                     // product views, add-to-cart and purchases
 *     tailor.addToCart("22423", 1, 12.75);
 *     tailor.purchase([{itemId: "22423", quantity: 1, unitPrice: 12.75}]);
 *     tailor.decide();                                 // fills every [data-tailor-point] element on the page
 *   </script>
 *
 * Events go in batches (every flushMs, or at once when batchSize are waiting, and when the page is hidden) to
 * IngestEvents over the gateway's HTTP port with a browser key. The visitor's anonymous id is kept in first-party
 * storage (localStorage). Nothing is stored or sent until consent is given (options.consent, or setConsent(true),
 * remembered in localStorage); withdrawing it sends the withdrawal, forgets the id and stops.
 * Decisions: decide() asks GetDecisions for the points named by data-tailor-point on the page and renders each
 * into its element (elements with data-tailor-field="<field>" get that field of the content; a <template> child is
 * repeated for each item of a recommendation); it records an impression when shown and a click when clicked, both
 * with the personalization id, so attribution credits the decision. A "tailor:decision" event is dispatched on the
 * element with the personalization, for pages that render themselves.
 */
(function (global) {
  "use strict";

  var SERVICE = "/personalization.gateway.v1.GatewayService/";
  var ID_KEY = "tailor_anonymous_id";
  var CONSENT_KEY = "tailor_consent";
  var MAX_QUEUE = 500;

  function storage() {
    try { return global.localStorage; } catch (e) { return null; }
  }

  function randomId() {
    if (global.crypto && global.crypto.randomUUID) { return global.crypto.randomUUID(); }
    return "xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx".replace(/[xy]/g, function (c) {
      var r = Math.random() * 16 | 0;
      return (c === "x" ? r : (r & 3 | 8)).toString(16);
    });
  }

  function Tracker(options) {
    this.endpoint = (options.endpoint || "").replace(/\/+$/, "");
    this.key = options.key;
    this.identityType = options.identityType || "device_id";
    this.source = options.source || "web";
    this.purpose = options.consentPurpose || "personalization";
    this.batchSize = options.batchSize || 20;
    this.flushMs = options.flushMs === undefined ? 1000 : options.flushMs;
    this.queue = [];
    this.timer = null;
    this.sequence = 0;
    this.identities = [];
    this.sent = 0;
    var store = storage();
    var remembered = store && store.getItem(CONSENT_KEY);
    this.consent = options.consent === undefined ? remembered === "granted" : !!options.consent;
    if (options.consent !== undefined && store) { store.setItem(CONSENT_KEY, options.consent ? "granted" : "denied"); }
    var self = this;
    if (global.addEventListener) {
      global.addEventListener("pagehide", function () { self.flush(true); });
      global.addEventListener("visibilitychange", function () {
        if (global.document && global.document.visibilityState === "hidden") { self.flush(true); }
      });
    }
  }

  /* The anonymous id, created and stored on first use (only with consent). */
  Tracker.prototype.anonymousId = function () {
    if (!this.consent) { return null; }
    var store = storage();
    var id = this._id || (store && store.getItem(ID_KEY));
    if (!id) { id = randomId(); }
    if (store) { store.setItem(ID_KEY, id); }
    this._id = id;
    return id;
  };

  Tracker.prototype.setConsent = function (granted) {
    var store = storage();
    if (store) { store.setItem(CONSENT_KEY, granted ? "granted" : "denied"); }
    if (granted) {
      this.consent = true;
      this.track({type: "EVENT_TYPE_CUSTOM", name: "consent",
                  consents: [{purpose: this.purpose, status: "CONSENT_STATUS_GRANTED"}]});
      return;
    }
    if (this.consent) {
      this.track({type: "EVENT_TYPE_CUSTOM", name: "consent",
                  consents: [{purpose: this.purpose, status: "CONSENT_STATUS_DENIED"}]});
      this.flush(true);
    }
    this.consent = false;
    this.queue = [];
    this._id = null;
    if (store) { store.removeItem(ID_KEY); }
  };

  /* Adds a known identity (an email after login, a customer id): sent with every later event. */
  Tracker.prototype.identify = function (type, value, attributes) {
    this.identities = this.identities.filter(function (i) { return i.type !== type; });
    this.identities.push({type: type, value: String(value)});
    return this.track({type: "EVENT_TYPE_LOGIN", attributes: attributes});
  };

  Tracker.prototype.track = function (event) {
    var id = this.anonymousId();
    if (!id) { return false; }
    this.sequence += 1;
    var full = {
      messageId: id + "-" + Date.now().toString(36) + "-" + this.sequence + "-" + randomId().slice(0, 8),
      eventTime: new Date().toISOString(),
      source: this.source,
      identities: [{type: this.identityType, value: id}].concat(this.identities)
    };
    for (var k in event) { if (event[k] !== undefined) { full[k] = event[k]; } }
    if (this.queue.length >= MAX_QUEUE) { this.queue.shift(); }
    this.queue.push(full);
    if (this.queue.length >= this.batchSize) { this.flush(); } else { this._schedule(); }
    return true;
  };

  Tracker.prototype.page = function (properties) {
    var p = {url: global.location ? global.location.href : "", title: global.document ? global.document.title : ""};
    for (var k in properties || {}) { p[k] = properties[k]; }
    return this.track({type: "EVENT_TYPE_PAGE_VIEW", properties: p});
  };

  Tracker.prototype.productView = function (itemId, properties) {
    return this.track({type: "EVENT_TYPE_PRODUCT_VIEW", itemId: String(itemId), properties: properties});
  };

  Tracker.prototype.addToCart = function (itemId, quantity, unitPrice) {
    return this.track({type: "EVENT_TYPE_ADD_TO_CART", itemId: String(itemId),
                       properties: {quantity: quantity || 1, unit_price: unitPrice || 0}});
  };

  /* lines: [{itemId, quantity, unitPrice}]. */
  Tracker.prototype.purchase = function (lines, properties) {
    return this.track({type: "EVENT_TYPE_PURCHASE", properties: properties, lineItems: lines.map(function (l) {
      return {itemId: String(l.itemId), quantity: l.quantity || 1, unitPrice: l.unitPrice || 0};
    })});
  };

  Tracker.prototype._schedule = function () {
    var self = this;
    if (this.timer === null) {
      this.timer = setTimeout(function () { self.timer = null; self.flush(); }, this.flushMs);
    }
  };

  Tracker.prototype._post = function (method, body, keepalive) {
    return fetch(this.endpoint + SERVICE + method, {
      method: "POST", keepalive: !!keepalive, mode: "cors", credentials: "omit",
      headers: {"Authorization": "Bearer " + this.key, "Content-Type": "application/json",
                "Connect-Protocol-Version": "1"},
      body: JSON.stringify(body)
    });
  };

  /* Sends what is queued in one IngestEvents call; a failed send (network, 429, 5xx) is queued again. */
  Tracker.prototype.flush = function (keepalive) {
    if (this.timer !== null) { clearTimeout(this.timer); this.timer = null; }
    if (!this.queue.length) { return Promise.resolve(0); }
    var batch = this.queue.splice(0, this.queue.length);
    var self = this;
    return this._post("IngestEvents", {events: batch}, keepalive).then(function (response) {
      if (response.ok) { self.sent += batch.length; return batch.length; }
      if (response.status === 429 || response.status >= 500) { self._requeue(batch); }
      else { response.text().then(function (t) { if (global.console) { global.console.warn("tailor: events refused", t); } }); }
      return 0;
    }, function () { self._requeue(batch); return 0; });
  };

  Tracker.prototype._requeue = function (batch) {
    this.queue = batch.concat(this.queue).slice(-MAX_QUEUE);
    this._schedule();
  };

  /* Asks for decisions for points (default: every data-tailor-point on the page) and renders them. */
  Tracker.prototype.decide = function (points, context) {
    var id = this.anonymousId();
    var doc = global.document;
    var elements = doc ? Array.prototype.slice.call(doc.querySelectorAll("[data-tailor-point]")) : [];
    var names = points || elements.map(function (e) { return e.getAttribute("data-tailor-point"); });
    names = names.filter(function (n, i) { return n && names.indexOf(n) === i; });
    if (!id || !names.length) { return Promise.resolve([]); }
    var self = this;
    var request = {
      individualId: this.identities.length ? this.identities[0] : {type: this.identityType, value: id},
      personalizationPoints: names.map(function (n) { return {name: n}; }),
      context: context || {channel: "web", requestUrl: global.location ? global.location.href : ""}
    };
    return this._post("GetDecisions", request).then(function (response) {
      return response.json().then(function (body) {
        if (!response.ok) { throw new Error("tailor: " + (body.message || response.status)); }
        var served = body.personalizations || [];
        served.forEach(function (p) {
          elements.filter(function (e) { return e.getAttribute("data-tailor-point") === p.personalizationPointName; })
            .forEach(function (e) { self.render(e, p); });
        });
        return served;
      });
    });
  };

  function fill(root, data) {
    Array.prototype.slice.call(root.querySelectorAll("[data-tailor-field]")).forEach(function (f) {
      var value = data[f.getAttribute("data-tailor-field")];
      if (value === undefined || value === null) { return; }
      if (f.tagName === "IMG") { f.src = value; } else if (f.tagName === "A" && f.hasAttribute("data-tailor-href")) {
        f.href = value;
      } else { f.textContent = typeof value === "object" ? JSON.stringify(value) : value; }
    });
  }

  /* Renders a personalization into its element, then records the impression and watches for clicks. */
  Tracker.prototype.render = function (element, personalization) {
    var data = personalization.data || [];
    if (!personalization.personalizationId || !data.length) { return; }
    var template = element.querySelector("template");
    if (template) {
      var list = element.querySelector("[data-tailor-items]") || element;
      Array.prototype.slice.call(list.querySelectorAll("[data-tailor-item]")).forEach(function (n) { n.remove(); });
      data.forEach(function (entry) {
        var node = template.content.firstElementChild.cloneNode(true);
        node.setAttribute("data-tailor-item", entry.item_id || entry.itemId || "");
        fill(node, entry);
        list.appendChild(node);
      });
    } else if (element.querySelector("[data-tailor-field]")) {
      fill(element, data[0]);
    } else {
      var first = data[0];
      element.textContent = first.headline || first.text || first.title || JSON.stringify(first);
    }
    element.setAttribute("data-tailor-personalization-id", personalization.personalizationId);
    element.setAttribute("data-tailor-decision", personalization.decisionName || "");
    var detail = {personalizationId: personalization.personalizationId, point: personalization.personalizationPointName,
                  decision: personalization.decisionName || ""};
    this.track({type: "EVENT_TYPE_CUSTOM", name: "impression", properties: {
      personalization_id: detail.personalizationId, point: detail.point, decision: detail.decision}});
    if (!element._tailorClicks) {
      var self = this;
      element._tailorClicks = true;
      element.addEventListener("click", function (e) {
        var item = e.target && e.target.closest ? e.target.closest("[data-tailor-item]") : null;
        self.track({type: "EVENT_TYPE_CUSTOM", name: "click",
                    itemId: item ? item.getAttribute("data-tailor-item") || undefined : undefined,
                    properties: {personalization_id: element.getAttribute("data-tailor-personalization-id"),
                                 point: detail.point, decision: element.getAttribute("data-tailor-decision")}});
        self.flush(true);
      });
    }
    if (typeof CustomEvent === "function") {
      element.dispatchEvent(new CustomEvent("tailor:decision", {detail: personalization}));
    }
  };

  global.Tailor = {init: function (options) { return new Tracker(options || {}); }, version: "1"};
})(typeof window !== "undefined" ? window : this);
