// Placeholder: the dashboard's script (served at /static/app.js, embedded in the master).
"use strict";
