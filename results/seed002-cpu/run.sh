set -x
common="-d fashion-mnist --split test -m bn-mlp -e 3 -b 128 --optimizer rmsprop --flavour keras --seed 42 --device cpu"
relulab train $common -a relu --no-batchnorm --out relu_nobn.json
relulab train $common -a relu --out relu_bn.json
relulab train $common -a selu --no-batchnorm --out selu_nobn.json
relulab train $common -a selu --init random_uniform --out selu_bn_ru.json
relulab train $common -a selu --init lecun_uniform --out selu_bn_lecun.json
