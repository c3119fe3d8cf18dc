-- wrk script: every request starts one run of the workflow in WRK_WORKFLOW (default load-w3)
-- and waits for its end (`"response": "wait"`). The key comes from TROUPE_API_KEY.
--   wrk -t1 -c16 -d5s -s benchmarks/service/post_run.lua http://127.0.0.1:8080
wrk.method = "POST"
wrk.path = "/v1/runs"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. (os.getenv("TROUPE_API_KEY") or "")
wrk.body = '{"workflow":"' .. (os.getenv("WRK_WORKFLOW") or "load-w3") .. '","response":"wait"}'

function response(status, headers, body)
  if status ~= 200 then
    io.stderr:write("HTTP " .. status .. ": " .. body:sub(1, 200) .. "\n")
  end
end
